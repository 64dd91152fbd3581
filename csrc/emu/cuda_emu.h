// A small CUDA emulation layer: compiles csrc/cuda/*.cu as C++ for the CPU (test-only build, see
// tests/cuda_emu/) so that every launcher runs against `reference` under AddressSanitizer.
//
// Each block runs on its own, one after another. Each CUDA thread of the block is a fibre on the calling
// OS thread (on x86-64 a stack switch of the callee-saved registers; elsewhere ucontext, whose swapcontext
// makes a sigprocmask system call per switch, which was most of the emulation's time in the tensor-core
// kernels). A fibre runs until it reaches __syncthreads(), a warp-collective call (shuffle, __syncwarp,
// wmma) or returns. Warps run one after another: the lanes of a warp run in turn, and once
// every live lane of the warp waits at a warp-collective call the warp goes on at once, so each warp runs
// ahead of the later ones up to its next __syncthreads(), which is released when every live thread of the
// block has arrived. So a thread reads shared memory before other warps have written it unless a
// __syncthreads() separates them, as on a GPU, and a missing barrier changes the results.
// VTREID_EMU_ORDER=reverse runs the warps, and the lanes in each, in reverse order (the last warp runs
// ahead: a second interleaving).
// __shared__ arrays are function statics (one block runs at a time). Launches check their configuration
// against the hardware limits (grid x <= 2^31 - 1, y and z <= 65535, every dimension >= 1, at most 1024
// threads); a bad one sets the error cudaGetLastError() returns, as the CUDA runtime does.
// nvcuda::wmma (<mma.h>, csrc/emu/include/mma.h) is emulated for the m16n16k16 half / bfloat16 and m16n16k8 TF32 shapes.
// Device queries (cudaGetDevice, cudaDeviceGetAttribute) answer for an emulated device, 132 SMs and compute
// capability 9.0 unless emu::set_device() says otherwise, so launchers that pick a kernel by device can
// have every choice tested.
// What it cannot run: inline PTX (cp.async, ldmatrix, mma), cooperative groups.
#pragma once
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define VTREID_EMU_ASAN 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// --- runtime types -------------------------------------------------------------------------------------
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
using cudaStream_t = void*;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 { unsigned x = 0, y = 0, z = 0; };
struct alignas(16) uint4 { unsigned x = 0, y = 0, z = 0, w = 0; };

namespace emu {
inline cudaError_t last_error = cudaSuccess;
inline bool dry_run = false;  // check launch configurations only (grid-limit tests with huge sizes)
inline int device_sms = 132, device_cc_major = 9, device_cc_minor = 0;  // what device queries answer
}  // namespace emu

enum cudaDeviceAttr : int {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return emu::last_error = cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = emu::device_sms; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = emu::device_cc_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = emu::device_cc_minor; return cudaSuccess;
  }
  return emu::last_error = cudaErrorInvalidValue;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

// --- half and bfloat16 (storage + correctly rounded conversions) ----------------------------------------
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
using half = __half;

inline float __half2float(__half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1fu, mant = h.bits & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  const uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (mant << 13)) : (sign | ((exp + 112) << 23) | (mant << 13));
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}
inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return {static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u))};
  const int e = static_cast<int>(exp) - 112;
  if (e >= 31) return {static_cast<uint16_t>(sign | 0x7c00u)};
  if (e <= 0) {
    if (e < -10) return {static_cast<uint16_t>(sign)};
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t m = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (m & 1u))) ++m;
    return {static_cast<uint16_t>(sign | m)};
  }
  uint32_t h = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right (up to inf)
  return {static_cast<uint16_t>(h)};
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((x >> 16) | 0x40u)};
  return {static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}

// --- device math as CUDA spells it ----------------------------------------------------------------------
using std::exp;
using std::isfinite;
using std::sqrt;
template <typename T> inline T max(T a, T b) { return a > b ? a : b; }
template <typename T> inline T min(T a, T b) { return a < b ? a : b; }

// --- the fibre scheduler --------------------------------------------------------------------------------
namespace emu {

constexpr int kWarp = 32;
constexpr size_t kStack = 256 * 1024;

enum class State { kRun, kBlockBarrier, kWarpBarrier, kDone };

// --- fibre contexts ----------------------------------------------------------------------------------
#if defined(__x86_64__)
// A context is the stack pointer of a suspended fibre; its stack holds the SysV callee-saved registers,
// MXCSR and the x87 control word below the return address. vtreid_emu_switch(save, to) saves the caller's
// context in *save and resumes `to`. The signal mask is not switched: fibres never change it.
// (Top-level asm in a COMDAT group: every translation unit may define it, the linker keeps one copy.)
asm(R"(
  .pushsection .text.vtreid_emu_switch,"axG",@progbits,vtreid_emu_switch,comdat
  .globl vtreid_emu_switch
  .hidden vtreid_emu_switch
  .type vtreid_emu_switch,@function
vtreid_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size vtreid_emu_switch, .-vtreid_emu_switch
  .popsection
)");
extern "C" void vtreid_emu_switch(void** save, void* to);

struct Context { void* sp = nullptr; };
inline void switch_context(Context& save, const Context& to) { vtreid_emu_switch(&save.sp, to.sp); }
// A context that starts entry() on [stack, stack + size) as if it had been called; entry must not return.
inline Context start_context(char* stack, size_t size, void (*entry)()) {
#ifdef VTREID_EMU_ASAN
  // The stack's last fibre may have left redzones poisoned (its frames were never unwound); ASan's own
  // swapcontext interceptor clears them the same way.
  __asan_unpoison_memory_region(stack, size);
#endif
  uint32_t control[2] = {0, 0};
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15});
  uint64_t* ret = top - 2;  // 16-aligned, so entry() starts with rsp = 8 mod 16, as after a call
  ret[0] = reinterpret_cast<uint64_t>(entry);
  ret[1] = 0;
  uint64_t* sp = ret - 7;  // control words, then r15 r14 r13 r12 rbx rbp (rbp = 0 ends frame-pointer walks)
  std::memcpy(sp, control, sizeof(control));
  for (int i = 1; i < 7; ++i) sp[i] = 0;
  return {sp};
}
#else
struct Context { ucontext_t ctx; };
inline void switch_context(Context& save, const Context& to) { swapcontext(&save.ctx, &to.ctx); }
inline Context start_context(char* stack, size_t size, void (*entry)()) {
  Context c;
  getcontext(&c.ctx);
  c.ctx.uc_stack.ss_sp = stack;
  c.ctx.uc_stack.ss_size = size;
  c.ctx.uc_link = nullptr;
  makecontext(&c.ctx, entry, 0);
  return c;
}
#endif

struct Fibre {
  Context ctx;
  State state = State::kRun;
  int tid = 0;
  uint64_t collectives = 0;  // warp-collective calls (wmma) this thread has reached
};

struct Block {
  std::vector<Fibre> fibres;
  std::vector<char*> stacks;
  std::vector<uint64_t> slots;  // warp shuffle exchange, one per thread
  Context scheduler;
  std::function<void()> body;
  int current = -1;
#ifdef VTREID_EMU_ASAN
  void* fake_stack = nullptr;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif
};

inline Block* block = nullptr;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s (block %u,%u,%u thread %d)\n", what, blockIdx.x, blockIdx.y, blockIdx.z,
               block ? block->current : -1);
  std::abort();
}

inline void set_thread(int tid) {
  threadIdx.x = tid % blockDim.x;
  threadIdx.y = (tid / blockDim.x) % blockDim.y;
  threadIdx.z = tid / (blockDim.x * blockDim.y);
}

// Fibre -> scheduler.
inline void yield(State state) {
  Fibre& f = block->fibres[block->current];
  f.state = state;
#ifdef VTREID_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, block->main_bottom, block->main_size);
  switch_context(f.ctx, block->scheduler);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(f.ctx, block->scheduler);
#endif
}

inline void fibre_entry() {
#ifdef VTREID_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &block->main_bottom, &block->main_size);
#endif
  block->body();
  Fibre& f = block->fibres[block->current];
  f.state = State::kDone;
#ifdef VTREID_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, block->main_bottom, block->main_size);  // this fibre ends
#endif
  Context ended;  // never resumed
  switch_context(ended, block->scheduler);
  fail("an ended fibre was resumed");
}

// Scheduler -> fibre t, until it yields or ends.
inline void resume(int t) {
  block->current = t;
  set_thread(block->fibres[t].tid);
  block->fibres[t].state = State::kRun;
#ifdef VTREID_EMU_ASAN
  __sanitizer_start_switch_fiber(&block->fake_stack, block->stacks[t], kStack);
  switch_context(block->scheduler, block->fibres[t].ctx);
  __sanitizer_finish_switch_fiber(block->fake_stack, nullptr, nullptr);
#else
  switch_context(block->scheduler, block->fibres[t].ctx);
#endif
}

inline bool reverse_order() {
  const char* order = std::getenv("VTREID_EMU_ORDER");
  return order != nullptr && std::strcmp(order, "reverse") == 0;
}

inline void run_block(Block& b, int threads) {
  const bool reverse = reverse_order();
  b.fibres.assign(threads, Fibre{});
  b.slots.assign(threads, 0);
  while (static_cast<int>(b.stacks.size()) < threads) b.stacks.push_back(static_cast<char*>(std::malloc(kStack)));
  for (int t = 0; t < threads; ++t) {
    Fibre& f = b.fibres[t];
    f.tid = t;
    f.ctx = start_context(b.stacks[t], kStack, fibre_entry);
  }
  const int warps = (threads + kWarp - 1) / kWarp;
  for (;;) {
    for (int wi = 0; wi < warps; ++wi) {
      const int w = reverse ? warps - 1 - wi : wi;
      const int lo = w * kWarp, hi = std::min(threads, lo + kWarp);
      for (;;) {  // this warp runs ahead until its lanes wait at __syncthreads() or end
        for (int li = 0; li < hi - lo; ++li) {
          const int t = reverse ? hi - 1 - li : lo + li;
          if (b.fibres[t].state == State::kRun) resume(t);
        }
        int lanes = 0, waiting = 0;
        for (int t = lo; t < hi; ++t) {
          lanes += b.fibres[t].state != State::kDone;
          waiting += b.fibres[t].state == State::kWarpBarrier;
        }
        if (waiting == 0 || waiting != lanes) break;
        for (int t = lo; t < hi; ++t) {
          if (b.fibres[t].state == State::kWarpBarrier) b.fibres[t].state = State::kRun;
        }
      }
    }
    int live = 0, at_block = 0;
    for (const Fibre& f : b.fibres) {
      live += f.state != State::kDone;
      at_block += f.state == State::kBlockBarrier;
    }
    if (live == 0) break;
    if (at_block == live) {
      for (Fibre& f : b.fibres) {
        if (f.state == State::kBlockBarrier) f.state = State::kRun;
      }
      continue;
    }
    block->current = -1;
    fail("deadlock: threads wait at __syncthreads() while others of the block wait at a warp shuffle");
  }
}

struct Config {
  dim3 grid;
  dim3 block;
  size_t shared_bytes = 0;
  cudaStream_t stream = nullptr;
};

inline bool valid(const Config& c) {
  const unsigned long long threads = 1ull * c.block.x * c.block.y * c.block.z;
  return c.grid.x >= 1 && c.grid.y >= 1 && c.grid.z >= 1 && c.grid.x <= 2147483647u && c.grid.y <= 65535u &&
         c.grid.z <= 65535u && c.block.x >= 1 && c.block.y >= 1 && c.block.z >= 1 && threads <= 1024 &&
         c.block.z <= 64 && c.shared_bytes == 0;
}

// kernel<<<config>>>(args...), rewritten by tests/cuda_emu/build.py as emu::launch(kernel, Config{...}, args...).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), Config config, Args&&... args) {
  if (!valid(config)) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (dry_run) return;
  static Block b;
  Block* outer = block;
  block = &b;
  gridDim = config.grid;
  blockDim = config.block;
  const int threads = static_cast<int>(config.block.x * config.block.y * config.block.z);
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  b.body = [&] { std::apply(kernel, params); };
  for (unsigned z = 0; z < config.grid.z; ++z) {
    for (unsigned y = 0; y < config.grid.y; ++y) {
      for (unsigned x = 0; x < config.grid.x; ++x) {
        blockIdx = {x, y, z};
        run_block(b, threads);
      }
    }
  }
  block = outer;
}

inline int lane_id() { return block->current % kWarp; }

}  // namespace emu

inline void __syncthreads() { emu::yield(emu::State::kBlockBarrier); }
[[noreturn]] inline void __trap() { emu::fail("__trap()"); }
inline void __syncwarp(unsigned /*mask: the full warp*/ = 0xffffffffu) { emu::yield(emu::State::kWarpBarrier); }

template <typename T>
T __shfl_xor_sync(unsigned /*mask: the full warp*/, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of a wide type");
  emu::Block& b = *emu::block;
  const int me = b.current;
  const int partner = me - emu::lane_id() + (emu::lane_id() ^ lane_mask);
  std::memcpy(&b.slots[me], &value, sizeof(T));
  emu::yield(emu::State::kWarpBarrier);  // every live lane has published its value
  if (partner >= static_cast<int>(b.fibres.size()) || b.fibres[partner].state == emu::State::kDone) {
    emu::fail("__shfl_xor_sync reads a lane that has exited or does not exist");
  }
  T out;
  std::memcpy(&out, &b.slots[partner], sizeof(T));
  emu::yield(emu::State::kWarpBarrier);  // every lane has read before the slots are reused
  return out;
}

template <typename T>
T atomicAdd(T* address, T value) {  // fibres never preempt each other: a plain read-modify-write is atomic
  const T old = *address;
  *address = old + value;
  return old;
}
