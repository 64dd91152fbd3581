// Emulation stand-in for <cuda_fp16.h> (test-only build of csrc/cuda on the CPU).
#pragma once
#include "../cuda_emu.h"
