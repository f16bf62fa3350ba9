// Work sharing over XLA's intra-op thread pool for the FFI kernels of this directory.

#ifndef SMML_JAX_OPS_NATIVE_PARALLEL_H_
#define SMML_JAX_OPS_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace smml_native {

// Runs work(item) for item in [0, n_items) on the caller and the XLA intra-op pool. Waits for the
// items, never for the helper tasks: a task that starts after all items are taken touches only
// the shared counters it owns a reference to, so a busy pool cannot deadlock the call.
template <typename Work>
void ParallelFor(xla::ffi::ThreadPool* pool, int64_t n_items, const Work& work) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto run = [state, n_items, &work]() {
    // `work` is only called while items remain, i.e. before ParallelFor returns.
    for (int64_t i; (i = state->next.fetch_add(1)) < n_items;) {
      work(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = 0;
  if (pool != nullptr) helpers = std::min<int64_t>(pool->num_threads(), n_items - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = run;
    pool->Schedule(std::move(task));
  }
  run();
  while (state->done.load(std::memory_order_acquire) < n_items) std::this_thread::yield();
}

}  // namespace smml_native

#endif  // SMML_JAX_OPS_NATIVE_PARALLEL_H_
