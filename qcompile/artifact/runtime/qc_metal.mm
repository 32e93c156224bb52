/* qc_metal.h over Metal.framework (Objective-C++, ARC): see qc_metal.h for the contract.
 *
 * One device, queue, library and set of pipelines per process, made once by qc_metal_open. Every
 * allocation is a shared-storage MTLBuffer kept in a registry, so a dispatch can name a buffer by
 * any CPU pointer inside it. A run is one command buffer with one serial compute encoder per
 * thread: each dispatch sees the previous one's writes, and qc_metal_end waits for the whole run. */
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include <mutex>
#include <vector>

#include "qc_metal.h"

namespace {

struct Allocation {
  const char* base;
  size_t bytes;
  id<MTLBuffer> buffer;
};

struct Run {
  id<MTLCommandBuffer> commands;
  id<MTLComputeCommandEncoder> encoder;
  NSMutableArray<id<MTLBuffer>>* workspaces;
};

std::mutex registry_lock;
std::vector<Allocation> registry;   /* ARC keeps each buffer alive while it is listed */

id<MTLDevice> device;
id<MTLCommandQueue> queue;
NSArray<id<MTLComputePipelineState>>* pipelines;
NSArray<NSString*>* pipeline_names;

thread_local char error_text[512];
thread_local Run* current;

int fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
int fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_text, sizeof error_text, fmt, ap);
  va_end(ap);
  return -1;
}

const char* describe(NSError* error) {
  return error ? [[error localizedDescription] UTF8String] : "no reason given";
}

void* register_buffer(id<MTLBuffer> buffer) {
  if (!buffer) return nullptr;
  std::lock_guard<std::mutex> hold(registry_lock);
  registry.push_back({(const char*)[buffer contents], (size_t)[buffer length], buffer});
  return (void*)registry.back().base;
}

/* The allocation holding p .. p + bytes, or nil. */
id<MTLBuffer> lookup(const void* p, size_t bytes, size_t* offset) {
  std::lock_guard<std::mutex> hold(registry_lock);
  const char* c = (const char*)p;
  for (const Allocation& a : registry)
    if (c >= a.base && c + bytes <= a.base + a.bytes) {
      *offset = (size_t)(c - a.base);
      return a.buffer;
    }
  return nil;
}

void unregister(const void* p) {
  std::lock_guard<std::mutex> hold(registry_lock);
  for (size_t i = 0; i < registry.size(); ++i)
    if (registry[i].base == p) {
      registry.erase(registry.begin() + (long)i);
      return;
    }
}

pthread_once_t open_once = PTHREAD_ONCE_INIT;
const char* const* open_names;
int open_count;
const void* open_lib;
size_t open_lib_bytes;
char open_error[512];

void open_device() {
  @autoreleasepool {
    device = MTLCreateSystemDefaultDevice();
    if (!device) {
      snprintf(open_error, sizeof open_error, "no Metal device: this library runs on an Apple GPU");
      return;
    }
    if (![device supportsFamily:MTLGPUFamilyApple7]) {
      snprintf(open_error, sizeof open_error, "the Metal device '%s' is older than Apple GPU family 7 (M1/A14), "
               "which this library was built for", [[device name] UTF8String]);
      device = nil;
      return;
    }
    queue = [device newCommandQueue];
    dispatch_data_t bytes = dispatch_data_create(open_lib, open_lib_bytes, nil, DISPATCH_DATA_DESTRUCTOR_DEFAULT);
    NSError* error = nil;
    id<MTLLibrary> library = [device newLibraryWithData:bytes error:&error];
    if (!library) {
      snprintf(open_error, sizeof open_error, "loading the embedded metallib (%zu bytes) failed: %s", open_lib_bytes,
               describe(error));
      device = nil;
      return;
    }
    NSMutableArray* made = [NSMutableArray arrayWithCapacity:(NSUInteger)open_count];
    NSMutableArray* names = [NSMutableArray arrayWithCapacity:(NSUInteger)open_count];
    for (int k = 0; k < open_count; ++k) {
      NSString* name = [NSString stringWithUTF8String:open_names[k]];
      id<MTLFunction> function = [library newFunctionWithName:name];
      if (!function) {
        snprintf(open_error, sizeof open_error, "the embedded metallib has no kernel '%s'", open_names[k]);
        device = nil;
        return;
      }
      id<MTLComputePipelineState> pipeline = [device newComputePipelineStateWithFunction:function error:&error];
      if (!pipeline) {
        snprintf(open_error, sizeof open_error, "creating the pipeline of kernel '%s' failed: %s", open_names[k],
                 describe(error));
        device = nil;
        return;
      }
      [made addObject:pipeline];
      [names addObject:name];
    }
    pipelines = made;
    pipeline_names = names;
  }
}

}  // namespace

extern "C" {

int qc_metal_open(const char* const* kernels, int num_kernels, const void* metallib, size_t metallib_bytes) {
  open_names = kernels;
  open_count = num_kernels;
  open_lib = metallib;
  open_lib_bytes = metallib_bytes;
  pthread_once(&open_once, open_device);
  if (!device) return fail("%s", open_error);
  return 0;
}

void* qc_metal_alloc(size_t bytes) {
  if (!device) return nullptr;
  return register_buffer([device newBufferWithLength:(bytes ? bytes : 64) options:MTLResourceStorageModeShared]);
}

void qc_metal_free(void* p) {
  if (p) unregister(p);
}

int qc_metal_owns(const void* p, size_t bytes) {
  size_t offset;
  return p && lookup(p, bytes, &offset) != nil;
}

int qc_metal_begin(void) {
  @autoreleasepool {  /* what Metal returns autoreleased is freed per call: callers have no pool */
    if (!device) return fail("qc_metal_begin: Metal is not open");
    if (current) return fail("qc_metal_begin: a run is already being encoded on this thread");
    current = new Run();
    current->commands = [queue commandBuffer];
    current->encoder = [current->commands computeCommandEncoder];   /* serial: dispatches run in order */
    current->workspaces = [NSMutableArray array];
    if (!current->commands || !current->encoder) {
      delete current;
      current = nullptr;
      return fail("creating a Metal command buffer failed");
    }
    return 0;
  }
}

int qc_metal_end(void) {
  @autoreleasepool {  /* what Metal returns autoreleased is freed per call: callers have no pool */
    if (!current) return fail("qc_metal_end: no run is being encoded on this thread");
    Run* run = current;
    current = nullptr;
    [run->encoder endEncoding];
    [run->commands commit];
    [run->commands waitUntilCompleted];
    int status = 0;
    if ([run->commands status] == MTLCommandBufferStatusError)
      status = fail("the Metal command buffer failed: %s", describe([run->commands error]));
    for (id<MTLBuffer> w in run->workspaces) unregister([w contents]);
    delete run;
    return status;
  }
}

int qc_metal_dispatch(int kernel, const int64_t grid[3], const int64_t block[3], int num_buffers,
                      void* const* buffers, const void* args, size_t args_bytes) {
  @autoreleasepool {  /* what Metal returns autoreleased is freed per call: callers have no pool */
    if (!current) return fail("qc_metal_dispatch: no run is being encoded (qc_metal_begin)");
    if (kernel < 0 || kernel >= (int)[pipelines count]) return fail("qc_metal_dispatch: no kernel %d", kernel);
    id<MTLComputePipelineState> pipeline = pipelines[(NSUInteger)kernel];
    const char* name = [pipeline_names[(NSUInteger)kernel] UTF8String];
    int64_t threads = block[0] * block[1] * block[2];
    if (threads <= 0 || threads > (int64_t)[pipeline maxTotalThreadsPerThreadgroup])
      return fail("kernel %s: a threadgroup of (%lld, %lld, %lld) threads; its pipeline allows at most %lu", name,
                  (long long)block[0], (long long)block[1], (long long)block[2],
                  (unsigned long)[pipeline maxTotalThreadsPerThreadgroup]);
    [current->encoder setComputePipelineState:pipeline];
    for (int i = 0; i < num_buffers; ++i) {
      size_t offset = 0;
      id<MTLBuffer> buffer = lookup(buffers[i], 1, &offset);
      if (!buffer)
        return fail("kernel %s: buffer %d (%p) is not memory from qc_metal_alloc", name, i, buffers[i]);
      [current->encoder setBuffer:buffer offset:offset atIndex:(NSUInteger)i];
    }
    if (args_bytes) [current->encoder setBytes:args length:args_bytes atIndex:(NSUInteger)num_buffers];
    [current->encoder dispatchThreadgroups:MTLSizeMake((NSUInteger)grid[0], (NSUInteger)grid[1], (NSUInteger)grid[2])
                     threadsPerThreadgroup:MTLSizeMake((NSUInteger)block[0], (NSUInteger)block[1], (NSUInteger)block[2])];
    return 0;
  }
}

void* qc_metal_workspace(size_t bytes) {
  if (!current) {
    fail("qc_metal_workspace: no run is being encoded");
    return nullptr;
  }
  id<MTLBuffer> w = [device newBufferWithLength:(bytes ? bytes : 64) options:MTLResourceStorageModeShared];
  if (!w) {
    fail("no device memory for a workspace of %zu bytes", bytes);
    return nullptr;
  }
  [current->workspaces addObject:w];
  return register_buffer(w);
}

const char* qc_metal_error(void) { return error_text; }

}  /* extern "C" */
