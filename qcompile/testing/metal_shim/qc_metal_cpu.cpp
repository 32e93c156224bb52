/* qc_metal.h on the CPU: the Metal runtime of an artifact whose MSL kernels were compiled for the
 * CPU shim (qcompile.testing.metal_cpu), so CI checks a Metal build numerically without a Mac.
 *
 * It keeps what a Mac would enforce: memory is "shared storage" handed out by qc_metal_alloc, and
 * a dispatch's buffers must lie inside such allocations; dispatches are only encoded between
 * qc_metal_begin and qc_metal_end and run, in order, at qc_metal_end (reading results earlier
 * sees stale data, as on a GPU); a dispatch the Metal validation layer rejects (an empty grid, a
 * threadgroup over 1024 threads, buffers or arguments the kernel does not take) fails at once,
 * naming the kernel. Workspaces start filled with 0xFF bytes (NaN, -1), so a kernel that reads
 * one before writing it shows. Kernels run one threadgroup at a time (../cuda_shim: fibers, checked
 * barriers); a broken barrier aborts the process with the kernel and the source lines. */
#include "qc_metal.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "../cuda_shim/qc_shim.h"
#include "qc_metal_kernels.h"

namespace {

constexpr int64_t kMaxThreadsPerThreadgroup = 1024;
constexpr size_t kThreadgroupBytes = 32768;     /* Apple GPU family 7+ */
constexpr size_t kAlign = 256;

std::mutex mutex;                                /* guards allocations and pipelines */
std::map<uintptr_t, size_t> allocations;         /* start -> bytes */
std::vector<const qc_metal_kernel*> pipelines;   /* qc_metal_open's kernels, by dispatch index */

struct Dispatch {
  const qc_metal_kernel* kernel;
  dim3 grid, block;
  std::vector<void*> buffers;
  std::vector<unsigned char> args;
};
/* this thread's command buffer */
struct Run {
  bool open = false;
  std::vector<Dispatch> dispatches;
  std::vector<void*> workspaces;
};
thread_local Run command;
thread_local std::string error;

int fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
int fail(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  error = buf;
  return -1;
}

void* allocate(size_t bytes, int fill) {
  const size_t size = (bytes ? bytes : 1);
  void* p = std::aligned_alloc(kAlign, (size + kAlign - 1) / kAlign * kAlign);
  if (!p) return nullptr;
  std::memset(p, fill, size);
  std::lock_guard<std::mutex> lock(mutex);
  allocations[(uintptr_t)p] = size;
  return p;
}

bool owned(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex);
  auto it = allocations.upper_bound((uintptr_t)p);
  if (it == allocations.begin()) return false;
  --it;
  const uintptr_t offset = (uintptr_t)p - it->first;
  return offset < it->second && bytes <= it->second - offset;
}

void execute(const Dispatch& d) {
  struct Ctx {
    const Dispatch* d;
    void* const* buffers;
  } ctx{&d, d.buffers.data()};
  qc_shim::names = {"metal shim", "threadgroup_barrier()"};
  qc_shim::run(d.kernel->name, d.grid, d.block, 0,
               [](void* c) {
                 const Ctx* x = (const Ctx*)c;
                 x->d->kernel->thunk(x->buffers, x->d->args.data());
               },
               &ctx);
}

}  // namespace

extern "C" {

int qc_metal_open(const char* const* kernels, int num_kernels, const void* metallib, size_t metallib_bytes) {
  (void)metallib;          /* the kernels were compiled into this library */
  (void)metallib_bytes;
  std::vector<const qc_metal_kernel*> found;
  std::string missing;
  for (int i = 0; i < num_kernels; ++i) {
    const qc_metal_kernel* k = nullptr;
    for (int j = 0; j < qc_metal_num_kernels && !k; ++j)
      if (std::strcmp(qc_metal_kernels[j].name, kernels[i]) == 0) k = &qc_metal_kernels[j];
    if (!k) missing += std::string(missing.empty() ? "" : ", ") + kernels[i];
    else if (k->threadgroup_bytes > kThreadgroupBytes)
      return fail("creating the compute pipeline of kernel %s failed: its threadgroup memory (%zu bytes) exceeds the "
                  "device's maxThreadgroupMemoryLength (%zu bytes)", k->name, k->threadgroup_bytes, kThreadgroupBytes);
    found.push_back(k);
  }
  if (!missing.empty())
    return fail("the Metal library has no kernel named %s (kernels.metal and the launchers' table disagree)",
                missing.c_str());
  std::lock_guard<std::mutex> lock(mutex);
  pipelines = found;
  return 0;
}

void* qc_metal_alloc(size_t bytes) { return allocate(bytes, 0); }   /* new MTLBuffers are zero-filled */

void qc_metal_free(void* p) {
  if (!p) return;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (!allocations.erase((uintptr_t)p)) {
      std::fprintf(stderr, "qc_metal_free(%p): not a live qc_metal_alloc allocation (freed twice?)\n", p);
      std::abort();
    }
  }
  std::free(p);
}

int qc_metal_owns(const void* p, size_t bytes) { return p && owned(p, bytes); }

int qc_metal_begin(void) {
  if (command.open) return fail("qc_metal_begin: this thread's command buffer is already open (no qc_metal_end)");
  command.open = true;
  return 0;
}

int qc_metal_end(void) {
  if (!command.open) return fail("qc_metal_end without qc_metal_begin");
  for (const Dispatch& d : command.dispatches) execute(d);
  for (void* w : command.workspaces) qc_metal_free(w);
  command = Run();
  return 0;
}

int qc_metal_dispatch(int kernel, const int64_t grid[3], const int64_t block[3], int num_buffers,
                      void* const* buffers, const void* args, size_t args_bytes) {
  if (!command.open) return fail("qc_metal_dispatch outside qc_metal_begin/qc_metal_end");
  const qc_metal_kernel* k;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (kernel < 0 || kernel >= (int)pipelines.size())
      return fail("qc_metal_dispatch: no kernel %d (qc_metal_open loaded %d)", kernel, (int)pipelines.size());
    k = pipelines[kernel];
  }
  for (int i = 0; i < 3; ++i)
    if (grid[i] < 1 || block[i] < 1)
      return fail("Metal validation: dispatch of kernel %s: threadgroupsPerGrid (%lld, %lld, %lld) and "
                  "threadsPerThreadgroup (%lld, %lld, %lld) must be at least 1 in every dimension", k->name,
                  (long long)grid[0], (long long)grid[1], (long long)grid[2], (long long)block[0],
                  (long long)block[1], (long long)block[2]);
  if (grid[0] > UINT32_MAX || grid[1] > UINT32_MAX || grid[2] > UINT32_MAX)
    return fail("Metal validation: dispatch of kernel %s: threadgroupsPerGrid (%lld, %lld, %lld) exceeds 2^32 - 1",
                k->name, (long long)grid[0], (long long)grid[1], (long long)grid[2]);
  const double threads = (double)block[0] * (double)block[1] * (double)block[2];
  if (threads > kMaxThreadsPerThreadgroup)
    return fail("Metal validation: dispatch of kernel %s: threadsPerThreadgroup (%lld, %lld, %lld) = %.0f threads "
                "exceeds maxTotalThreadsPerThreadgroup (%lld)", k->name, (long long)block[0], (long long)block[1],
                (long long)block[2], threads, (long long)kMaxThreadsPerThreadgroup);
  if (num_buffers != k->num_buffers || args_bytes != k->args_bytes)
    return fail("Metal validation: kernel %s takes %d buffers and %zu bytes of arguments; the dispatch binds %d and "
                "%zu", k->name, k->num_buffers, k->args_bytes, num_buffers, args_bytes);
  if (args_bytes && !args) return fail("qc_metal_dispatch: kernel %s: args is NULL", k->name);
  for (int i = 0; i < num_buffers; ++i)
    if (buffers[i] && !owned(buffers[i], 1))
      return fail("qc_metal_dispatch: kernel %s: buffer %d (%p) lies in no qc_metal_alloc allocation (a Mac finds "
                  "no MTLBuffer for it)", k->name, i, buffers[i]);
  Dispatch d{k, dim3((unsigned)grid[0], (unsigned)grid[1], (unsigned)grid[2]),
             dim3((unsigned)block[0], (unsigned)block[1], (unsigned)block[2]),
             std::vector<void*>(buffers, buffers + num_buffers),
             std::vector<unsigned char>((const unsigned char*)args, (const unsigned char*)args + args_bytes)};
  command.dispatches.push_back(std::move(d));
  return 0;
}

void* qc_metal_workspace(size_t bytes) {
  if (!command.open) {
    fail("qc_metal_workspace outside qc_metal_begin/qc_metal_end");
    return nullptr;
  }
  void* p = allocate(bytes, 0xff);
  if (!p) {
    fail("qc_metal_workspace: out of memory (%zu bytes)", bytes);
    return nullptr;
  }
  command.workspaces.push_back(p);
  return p;
}

const char* qc_metal_error(void) { return error.c_str(); }

}  // extern "C"
