// Emulation stand-in for <cuda_runtime.h> (test-only build of csrc/cuda on the CPU).
#pragma once
#include "../cuda_emu.h"
