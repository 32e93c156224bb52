/* The CPU shim's runtime: the block scheduler behind QC_LAUNCH and Metal's dispatches (qc_shim.h:
 * fibers, checked barriers, warp exchanges) and the host API of cuda_runtime_api.h over host
 * memory. See cuda_shim.h. */
/* Fibers switch with _setjmp/_longjmp between stacks, which fortified longjmp refuses. */
#undef _FORTIFY_SOURCE
#include "cuda_shim.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdlib>
#include <mutex>

dim3 threadIdx, blockIdx, blockDim, gridDim;

/* Every `extern __shared__` array of a kernel: CUDA's default limit per block, as launchers never
 * raise it (cudaFuncSetAttribute). Kernels declare it as their own element type: no header
 * declaration, so the types never meet in one translation unit. */
constexpr size_t kDynSharedBytes = 48 << 10;
thread_local alignas(64) unsigned char qc_shim_dyn_shared[kDynSharedBytes];

namespace qc_shim {
Names names = {"cuda shim", "__syncthreads()"};

namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 << 10, kGuardBytes = 4096;

enum State { kReady, kAtBarrier, kAtWarp, kDone };

struct Fiber {
  jmp_buf resume;            /* its registers while it waits */
  ucontext_t start;          /* its first entry, onto its own stack */
  bool started;
  int index;                 /* linear thread id: x + y*bx + z*bx*by */
  dim3 tid;
  State state;
  const char* file;          /* where it waits */
  int line;
  unsigned mask;             /* warp operation: its lanes, op, value, source lane, result */
  WarpOp op;
  uint64_t value, result;
  int src;
};

/* Fibers persist across launches (stacks are mapped once): each loops running the kernel for
 * whatever thread the scheduler gives it next. ucontext only starts a fiber: swapcontext makes a
 * signal-mask syscall per switch, and a block of 1024 threads switches thousands of times, so
 * switches are _setjmp/_longjmp (no syscall; 10x faster runs). */
Fiber* fibers[kMaxThreads];
Fiber* current;              /* the running fiber; null in the scheduler and outside kernels */
jmp_buf scheduler;
void (*body)(void*);
void* body_ctx;
const char* kernel_name = "?";
cudaError_t last_error = cudaSuccess;
std::mutex launch_mutex;     /* these globals allow one launch at a time */

[[noreturn]] void die(const char* fmt, ...) {
  std::fprintf(stderr, "%s: kernel %s, block (%u,%u,%u): ", names.shim, kernel_name, blockIdx.x, blockIdx.y,
               blockIdx.z);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  std::fflush(stderr);
  std::abort();
}

/* "(x,y,z)": a thread's name in messages (four rotating buffers: several per message) */
const char* name(const Fiber* f) {
  static char buf[4][48];
  static int next;
  char* s = buf[next++ & 3];
  std::snprintf(s, 48, "(%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z);
  return s;
}

bool same_site(const Fiber* a, const Fiber* b) {
  return a->line == b->line && (a->file == b->file || std::strcmp(a->file, b->file) == 0);
}

void yield(Fiber* self) {
  if (!_setjmp(self->resume)) _longjmp(scheduler, 1);
}

void fiber_main() {
  Fiber* self = current;
  for (;;) {
    body(body_ctx);
    self->state = kDone;
    yield(self);
  }
}

/* Runs `f` until it returns or waits. */
void switch_to(Fiber* f) {
  current = f;
  threadIdx = f->tid;
  if (!_setjmp(scheduler)) {
    if (f->started) _longjmp(f->resume, 1);
    f->started = true;
    setcontext(&f->start);
  }
  current = nullptr;
}

Fiber* fiber(int i) {
  if (!fibers[i]) {
    char* mem = (char*)mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) die("no memory for thread %d's stack", i);
    mprotect(mem, kGuardBytes, PROT_NONE);     /* a stack overflow faults instead of corrupting */
    Fiber* f = new Fiber();
    getcontext(&f->start);
    f->start.uc_stack.ss_sp = mem + kGuardBytes;
    f->start.uc_stack.ss_size = kStackBytes;
    f->start.uc_link = nullptr;
    makecontext(&f->start, fiber_main, 0);
    fibers[i] = f;
  }
  return fibers[i];
}

void wait(State s) {
  if (!current) die("%s or a warp operation called outside a kernel", names.barrier);
  current->state = s;
  yield(current);
}

/* Releases each group of lanes waiting at the same warp operation once every lane its masks name
 * (and that still runs) is there; exited lanes are left out, as CUDA says. True if any went. */
bool release_warps(int n) {
  bool progress = false;
  for (int base = 0; base < n; base += 32) {
    const int lanes = n - base < 32 ? n - base : 32;
    unsigned waiting = 0, done = 0;
    for (int l = 0; l < lanes; ++l) {
      waiting |= (unsigned)(fibers[base + l]->state == kAtWarp) << l;
      done |= (unsigned)(fibers[base + l]->state == kDone) << l;
    }
    const unsigned exist = lanes == 32 ? ~0u : (1u << lanes) - 1;
    for (int l = 0; l < lanes; ++l) {
      const Fiber* lead = fibers[base + l];
      if (!(waiting >> l & 1)) continue;
      unsigned group = 0, named = 0;
      for (int k = l; k < lanes; ++k) {
        const Fiber* f = fibers[base + k];
        if ((waiting >> k & 1) && f->op == lead->op && same_site(f, lead)) {
          group |= 1u << k;
          named |= f->mask;
        }
      }
      waiting &= ~group;
      if ((named & exist & ~done) & ~group) continue;     /* someone it names is elsewhere */
      unsigned ballot = 0;
      for (int k = 0; k < lanes; ++k)
        if (group >> k & 1) ballot |= (unsigned)(fibers[base + k]->value != 0) << k;
      for (int k = 0; k < lanes; ++k) {
        if (!(group >> k & 1)) continue;
        Fiber* f = fibers[base + k];
        const bool from_other = f->src >= 0 && f->src < 32 && (group >> f->src & 1);
        f->result = f->op == kBallot ? ballot : from_other ? fibers[base + f->src]->value : f->value;
        f->state = kReady;
      }
      progress = true;
    }
  }
  return progress;
}

/* Nothing can run and no warp group can go: a deadlock on a GPU too. Says which threads disagree. */
[[noreturn]] void report_stuck(int n) {
  for (int i = 0; i < n; ++i) {
    const Fiber* f = fibers[i];
    if (f->state != kAtWarp) continue;
    for (int l = 0; l < 32; ++l) {
      const int j = (i & ~31) + l;
      const Fiber* g = j < n ? fibers[j] : nullptr;
      if (!g || !(f->mask >> l & 1) || g->state == kDone || (g->state == kAtWarp && same_site(g, f))) continue;
      die("thread %s waits at a warp operation (%s:%d, mask 0x%08x) that thread %s of its warp does not reach: it "
          "waits at %s (%s:%d)", name(f), f->file, f->line, f->mask, name(g),
          g->state == kAtBarrier ? names.barrier : "another warp operation", g->file, g->line);
    }
  }
  die("the block cannot proceed (a shim bug)");
}

void run_block(int n) {
  for (;;) {
    for (int i = 0; i < n; ++i) {
      if (fibers[i]->state == kReady) switch_to(fibers[i]);
    }
    if (release_warps(n)) continue;
    const Fiber *at_barrier = nullptr, *exited = nullptr;
    for (int i = 0; i < n; ++i) {
      const Fiber* f = fibers[i];
      if (f->state == kAtWarp) report_stuck(n);
      if (f->state == kAtBarrier && !at_barrier) at_barrier = f;
      if (f->state == kDone && !exited) exited = f;
    }
    if (!at_barrier) return;                 /* every thread returned */
    if (exited)
      die("thread %s waits at %s (%s:%d) but thread %s has returned: a barrier not every thread reaches "
          "(undefined behaviour; a hang or garbage on a GPU)", name(at_barrier), names.barrier, at_barrier->file,
          at_barrier->line, name(exited));
    for (int i = 0; i < n; ++i)
      if (!same_site(fibers[i], at_barrier))
        die("threads wait at different %s: thread %s at %s:%d, thread %s at %s:%d (divergent barrier; a hang or "
            "garbage on a GPU)", names.barrier, name(at_barrier), at_barrier->file, at_barrier->line,
            name(fibers[i]), fibers[i]->file, fibers[i]->line);
    for (int i = 0; i < n; ++i) fibers[i]->state = kReady;
  }
}

}  // namespace

void syncthreads(const char* file, int line) {
  if (current) {
    current->file = file;
    current->line = line;
  }
  wait(kAtBarrier);
}

uint64_t warp_op(unsigned mask, WarpOp op, uint64_t value, int src, const char* file, int line) {
  if (!current) die("a warp operation at %s:%d called outside a kernel", file, line);
  Fiber* self = current;
  self->mask = mask;
  self->op = op;
  self->value = value;
  self->src = src;
  self->file = file;
  self->line = line;
  wait(kAtWarp);
  return self->result;
}

unsigned active_mask() {
  if (!current) die("__activemask() called outside a kernel");
  const int n = (int)(blockDim.x * blockDim.y * blockDim.z), base = current->index & ~31;
  unsigned m = 0;
  for (int l = 0; l < 32 && base + l < n; ++l) m |= (unsigned)(fibers[base + l]->state != kDone) << l;
  return m;
}

int lane() { return current ? current->index & 31 : 0; }

void run(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, void (*fn)(void*), void* ctx) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  if (current) die("%s launched from inside a kernel (dynamic parallelism is not supported)", kernel);
  const uint64_t n = (uint64_t)block.x * block.y * block.z;
  /* the GPU's limits: the launch fails and the next cudaGetLastError says so */
  if (!block.x || !block.y || !block.z || !grid.x || !grid.y || !grid.z || n > kMaxThreads || block.z > 64 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (shared_bytes > kDynSharedBytes) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  kernel_name = kernel;
  body = fn;
  body_ctx = ctx;
  gridDim = grid;
  blockDim = block;
  for (int i = 0; i < (int)n; ++i) {
    Fiber* f = fiber(i);
    f->index = i;
    f->tid = dim3(i % block.x, i / block.x % block.y, i / (block.x * block.y));
  }
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        for (int i = 0; i < (int)n; ++i) fibers[i]->state = kReady;
        run_block((int)n);
      }
}

}  // namespace qc_shim

/* ---- host API: device memory is host memory; everything is synchronous ------------------------- */
using qc_shim::last_error;

static cudaError_t record(cudaError_t err) {
  if (err != cudaSuccess) last_error = err;
  return err;
}

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return record(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return record(device == 0 ? cudaSuccess : cudaErrorInvalidValue); }

cudaError_t cudaGetDevice(int* device) {
  if (!device) return record(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

/* Stream-ordered allocation is plain malloc here: a pool and its attributes change nothing. */
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (!pool || device != 0) return record(cudaErrorInvalidValue);
  *pool = nullptr;
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, enum cudaMemPoolAttr, void* value) {
  return record(value ? cudaSuccess : cudaErrorInvalidValue);
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (!ptr) return record(cudaErrorInvalidValue);
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256 * !bytes);   /* cudaMalloc aligns to 256 */
  return record(*ptr ? cudaSuccess : cudaErrorMemoryAllocation);
}

cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t) { return cudaMalloc(ptr, bytes); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return cudaFree(ptr); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind) {
  if ((unsigned)kind > cudaMemcpyDefault) return record(cudaErrorInvalidMemcpyDirection);
  if (bytes && (!dst || !src)) return record(cudaErrorInvalidValue);
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  if (bytes && !ptr) return record(cudaErrorInvalidValue);
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaGetLastError(void) {
  cudaError_t err = last_error;
  last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unrecognized error code";
}

}  // extern "C"
