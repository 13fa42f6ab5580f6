// Runs launch plans on the CPU: the execution model of launcher.h.
#include "launcher.h"

#include "hooks.h"

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace metal_emu {

using mlx_linalg_ext::metal::Arg;
using mlx_linalg_ext::metal::Dispatch;
using mlx_linalg_ext::metal::Plan;

void fail(const char* what) {
  std::fprintf(stderr, "[metal emulator] %s\n", what);
  std::fflush(stderr);
  std::abort();
}

namespace {

constexpr size_t kFiberStack = size_t(128) << 10;
constexpr uint32_t kMaxThreads = 1024; // per threadgroup, as on Apple GPUs
constexpr uint32_t kMaxThreadgroupBytes = 32768;

constexpr int kSimdWidth = 32; // threads of a SIMD group on Apple GPUs

enum FiberState : uint8_t { kRunning, kAtBarrier, kAtSimdBarrier, kDone };

// A collective operation of a SIMD group as its first lane ran it.
struct SimdRecord {
  SimdOp op;
  const void* memory;
  uint64_t elements_per_row;
  bool transpose;
  float operands[192];
  float result[64];
};

// The matrices an operation takes from the lanes.
int operand_count(SimdOp op) {
  switch (op) {
    case SimdOp::Load:
      return 0;
    case SimdOp::Store:
      return 1;
    case SimdOp::Multiply:
      return 2;
    case SimdOp::MultiplyAccumulate:
      return 3;
  }
  return 0;
}

// The collective operations of one SIMD group since its last barrier (a
// threadgroup or SIMD-group barrier, where every lane must have made all of
// them).
struct SimdLog {
  std::mutex mutex;
  std::vector<SimdRecord> records;
  uint32_t done[kSimdWidth] = {};
};

struct Group;

// Runs at a barrier once every thread of the group (or SIMD group) is there.
struct GroupCompletion {
  Group* g;
  void operator()() noexcept;
};
struct SimdCompletion {
  Group* g;
  int simd;
  void operator()() noexcept;
};

// One threadgroup in flight.
struct Group {
  Mode mode;
  int threads = 0;
  KernelEntry kernel = nullptr;
  LaunchArgs args{};
  std::vector<std::unique_ptr<SimdLog>> simd;
  // Fibers.
  ucontext_t scheduler;
  std::vector<ucontext_t> contexts;
  std::vector<FiberState> state;
  // OS threads.
  std::unique_ptr<std::barrier<GroupCompletion>> barrier;
  std::vector<std::unique_ptr<std::barrier<SimdCompletion>>> simd_barriers;
  std::atomic<int> returned{0};
  std::unique_ptr<std::atomic<int>[]> simd_returned; // per SIMD group

  void init_simd() {
    int groups = (threads + kSimdWidth - 1) / kSimdWidth;
    simd.clear();
    simd_barriers.clear();
    simd_returned.reset(new std::atomic<int>[groups]);
    for (int s = 0; s < groups; ++s) {
      simd.push_back(std::make_unique<SimdLog>());
      int lanes = std::min(kSimdWidth, threads - s * kSimdWidth);
      simd_barriers.push_back(
          std::make_unique<std::barrier<SimdCompletion>>(
              lanes, SimdCompletion{this, s}));
    }
  }
};

// Every lane of SIMD group s made every collective operation of the group's
// log; the log then starts afresh.
void close_simd_log(Group& g, int s) {
  SimdLog& log = *g.simd[s];
  int lanes = std::min(kSimdWidth, g.threads - s * kSimdWidth);
  for (int lane = 0; lane < lanes; ++lane) {
    if (log.done[lane] != log.records.size()) {
      fail(
          "a simdgroup matrix operation not made by every lane of its SIMD "
          "group before a barrier or the end of the kernel");
    }
    log.done[lane] = 0;
  }
  log.records.clear();
}

void close_simd_logs(Group& g) {
  for (int s = 0; s < int(g.simd.size()); ++s) {
    close_simd_log(g, s);
  }
}

void GroupCompletion::operator()() noexcept {
  close_simd_logs(*g);
}

void SimdCompletion::operator()() noexcept {
  close_simd_log(*g, simd);
}

thread_local Group* tl_group = nullptr;
thread_local int tl_tid = 0;

void run_thread(Group& g, int t) {
  LaunchArgs a = g.args;
  const uint32_t* size = a.threads;
  a.tid[0] = uint32_t(t) % size[0];
  a.tid[1] = uint32_t(t) / size[0] % size[1];
  a.tid[2] = uint32_t(t) / (size[0] * size[1]);
  a.simd_group = uint32_t(t) / kSimdWidth;
  a.simd_lane = uint32_t(t) % kSimdWidth;
  g.kernel(a);
}

// Element (r, c) of an 8 x 8 matrix in memory.
size_t simd_offset(const SimdRecord& r, int row, int col) {
  return r.transpose ? size_t(col) * r.elements_per_row + row
                     : size_t(row) * r.elements_per_row + col;
}

// The operation itself, as the first lane of the group runs it. The
// products accumulate with one fused multiply-add per term, in order of k
// (float32 accumulation, as simdgroup_multiply_accumulate on Apple GPUs).
void run_simd_record(SimdRecord& r) {
  const float* a = r.operands;
  const float* b = r.operands + 64;
  switch (r.op) {
    case SimdOp::Load: {
      const float* src = static_cast<const float*>(r.memory);
      for (int i = 0; i < 64; ++i) {
        r.result[i] = src[simd_offset(r, i / 8, i % 8)];
      }
      return;
    }
    case SimdOp::Store: {
      float* dst = static_cast<float*>(const_cast<void*>(r.memory));
      for (int i = 0; i < 64; ++i) {
        dst[simd_offset(r, i / 8, i % 8)] = a[i];
      }
      return;
    }
    case SimdOp::Multiply:
    case SimdOp::MultiplyAccumulate:
      for (int i = 0; i < 8; ++i) {
        for (int j = 0; j < 8; ++j) {
          float acc =
              r.op == SimdOp::Multiply ? 0.0f : r.operands[128 + i * 8 + j];
          for (int k = 0; k < 8; ++k) {
            acc = std::fma(a[i * 8 + k], b[k * 8 + j], acc);
          }
          r.result[i * 8 + j] = acc;
        }
      }
      return;
  }
}

void fiber_main() {
  Group& g = *tl_group;
  int t = tl_tid;
  run_thread(g, t);
  g.state[t] = kDone;
  // Returning resumes uc_link, the scheduler.
}

// Per OS worker: the fiber stacks, reused across threadgroups.
struct FiberStacks {
  std::vector<std::unique_ptr<char[]>> stacks;
  char* get(int t) {
    while (int(stacks.size()) <= t) {
      stacks.emplace_back(new char[kFiberStack]);
    }
    return stacks[t].get();
  }
};

// Releases the SIMD groups whose every lane waits at a simdgroup_barrier;
// false when no lane waits at one.
bool release_simd_barriers(Group& g) {
  bool any = false;
  for (int s = 0; s < int(g.simd.size()); ++s) {
    int first = s * kSimdWidth;
    int last = std::min(g.threads, first + kSimdWidth);
    int waiting = 0;
    for (int t = first; t < last; ++t) {
      waiting += g.state[t] == kAtSimdBarrier;
    }
    if (waiting == 0) {
      continue;
    }
    if (waiting != last - first) {
      fail("simdgroup_barrier not reached by every thread of the SIMD group");
    }
    close_simd_log(g, s);
    for (int t = first; t < last; ++t) {
      g.state[t] = kRunning;
    }
    any = true;
  }
  return any;
}

void run_group_fibers(Group& g, FiberStacks& stacks) {
  g.contexts.assign(g.threads, ucontext_t{});
  g.state.assign(g.threads, kRunning);
  for (int t = 0; t < g.threads; ++t) {
    ucontext_t& c = g.contexts[t];
    getcontext(&c);
    c.uc_stack.ss_sp = stacks.get(t);
    c.uc_stack.ss_size = kFiberStack;
    c.uc_link = &g.scheduler;
    makecontext(&c, fiber_main, 0);
  }
  tl_group = &g;
  bool reverse = false;
  for (;;) {
    // Run every released thread up to its next barrier or its end.
    for (int r = 0; r < g.threads; ++r) {
      int t = reverse ? g.threads - 1 - r : r;
      if (g.state[t] != kRunning) {
        continue;
      }
      tl_tid = t;
      swapcontext(&g.scheduler, &g.contexts[t]);
    }
    reverse = !reverse;
    if (release_simd_barriers(g)) {
      continue;
    }
    int done = int(std::count(g.state.begin(), g.state.end(), kDone));
    close_simd_logs(g);
    if (done == g.threads) {
      break;
    }
    if (done > 0) {
      fail("threadgroup_barrier not reached by every thread of the group");
    }
    std::fill(g.state.begin(), g.state.end(), kRunning);
  }
  tl_group = nullptr;
}

// OS threads kept for the next dispatches: creating one per GPU thread and
// dispatch was most of the threads mode's time. run(n, job) runs job(0) ..
// job(n - 1) on n of them and returns once all have.
class ThreadPool {
 public:
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) {
      t.join();
    }
  }

  void run(int n, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (int(threads_.size()) < n) {
      int t = int(threads_.size());
      threads_.emplace_back([this, t] { loop(t); });
    }
    job_ = &job;
    participants_ = n;
    remaining_ = n;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [&] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int t) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) {
        return;
      }
      seen = generation_;
      if (t >= participants_) {
        continue;
      }
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(t);
      lock.lock();
      if (--remaining_ == 0) {
        done_.notify_one();
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int participants_ = 0;
  int remaining_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// OS threads: one thread per GPU thread, kept across the threadgroups this
// worker takes; thread 0 fetches the next threadgroup between two barriers.
void run_groups_threads(
    Group& g,
    std::atomic<uint64_t>& next,
    uint64_t groups,
    const uint32_t* grid,
    std::vector<char>& smem,
    ThreadPool& pool) {
  g.barrier = std::make_unique<std::barrier<GroupCompletion>>(
      g.threads, GroupCompletion{&g});
  uint64_t current = 0;
  std::function<void(int)> body = [&](int t) {
    tl_group = &g;
    tl_tid = t;
    for (;;) {
      if (t == 0) {
        current = next.fetch_add(1);
        if (current < groups) {
          g.args.group[0] = uint32_t(current % grid[0]);
          g.args.group[1] = uint32_t(current / grid[0] % grid[1]);
          g.args.group[2] = uint32_t(current / (uint64_t(grid[0]) * grid[1]));
          std::memset(smem.data(), 0xff, smem.size());
          g.returned = 0;
          for (size_t s = 0; s < g.simd.size(); ++s) {
            g.simd_returned[s] = 0;
          }
        }
      }
      g.barrier->arrive_and_wait();
      if (current >= groups) {
        break;
      }
      run_thread(g, t);
      g.returned.fetch_add(1);
      g.simd_returned[t / kSimdWidth].fetch_add(1);
      g.barrier->arrive_and_wait();
    }
    tl_group = nullptr;
  };
  pool.run(g.threads, body);
}

void check_dispatch(const Dispatch& d) {
  auto bad = [&](const std::string& why) {
    throw std::runtime_error("[metal emulator] " + d.kernel + ": " + why);
  };
  if (!find_kernel(d.kernel)) {
    bad("no such kernel in expm_kernel_list.h");
  }
  uint64_t threads = uint64_t(d.threads[0]) * d.threads[1] * d.threads[2];
  if (threads == 0 || threads > kMaxThreads) {
    bad("threads per threadgroup out of range");
  }
  if (d.threadgroup_bytes > kMaxThreadgroupBytes ||
      d.threadgroup_bytes % 16 != 0) {
    bad("threadgroup memory not a multiple of 16 up to 32 KB");
  }
  if (d.ints.empty()) {
    bad("every kernel takes its int32 constants");
  }
  if (d.buffers.size() > 7) {
    bad("too many buffers");
  }
  bool takes = kernel_takes_threadgroup_memory(d.kernel, int(d.buffers.size()));
  if (takes != (d.threadgroup_bytes > 0)) {
    bad("threadgroup memory given to a kernel without it, or missing");
  }
}

// Runs every threadgroup of a grid to completion; proto holds the buffers,
// the constants and the threadgroup size.
void run_grid(
    KernelEntry kernel,
    const uint32_t* grid,
    uint32_t threadgroup_bytes,
    const LaunchArgs& proto,
    const Options& options) {
  const uint64_t groups = uint64_t(grid[0]) * grid[1] * grid[2];
  const int threads =
      int(proto.threads[0] * proto.threads[1] * proto.threads[2]);
  std::atomic<uint64_t> next{0};
  const int workers = int(std::clamp<uint64_t>(options.workers, 1, groups));
  // The calling thread's pools, one per worker (threads mode).
  static thread_local std::vector<std::unique_ptr<ThreadPool>> caller_pools;
  auto& pools = caller_pools; // the workers' own thread_local is not this one
  if (options.mode == Mode::Threads) {
    while (int(pools.size()) < workers) {
      pools.push_back(std::make_unique<ThreadPool>());
    }
  }
  auto worker = [&](int w) {
    std::vector<char> smem(std::max<uint32_t>(threadgroup_bytes, 16));
    Group g;
    g.mode = options.mode;
    g.threads = threads;
    g.init_simd();
    g.kernel = kernel;
    g.args = proto;
    g.args.smem = threadgroup_bytes ? smem.data() : nullptr;
    if (options.mode == Mode::Threads) {
      run_groups_threads(g, next, groups, grid, smem, *pools[w]);
      return;
    }
    FiberStacks stacks;
    for (;;) {
      uint64_t id = next.fetch_add(1);
      if (id >= groups) {
        return;
      }
      g.args.group[0] = uint32_t(id % grid[0]);
      g.args.group[1] = uint32_t(id / grid[0] % grid[1]);
      g.args.group[2] = uint32_t(id / (uint64_t(grid[0]) * grid[1]));
      std::memset(smem.data(), 0xff, smem.size());
      run_group_fibers(g, stacks);
    }
  };
  std::vector<std::thread> others;
  for (int w = 1; w < workers; ++w) {
    others.emplace_back(worker, w);
  }
  worker(0);
  for (auto& th : others) {
    th.join();
  }
}

void run_dispatch(
    const Dispatch& d,
    void* const* args,
    const Options& options) {
  check_dispatch(d);
  LaunchArgs proto{};
  proto.nbuffers = int(d.buffers.size());
  for (size_t i = 0; i < d.buffers.size(); ++i) {
    proto.buffers[i] = args[int(d.buffers[i])];
  }
  proto.ints = d.ints.data();
  for (int k = 0; k < 3; ++k) {
    proto.threads[k] = d.threads[k];
  }
  run_grid(
      find_kernel(d.kernel), d.groups, d.threadgroup_bytes, proto, options);
}

} // namespace

void threadgroup_barrier_here() {
  Group* g = tl_group;
  if (!g) {
    fail("threadgroup_barrier outside a kernel");
  }
  if (g->mode == Mode::Fibers) {
    int t = tl_tid;
    g->state[t] = kAtBarrier;
    swapcontext(&g->contexts[t], &g->scheduler);
    return;
  }
  if (g->returned.load() > 0) {
    fail("threadgroup_barrier after a thread of the group returned");
  }
  g->barrier->arrive_and_wait();
}

void simdgroup_barrier_here() {
  Group* g = tl_group;
  if (!g) {
    fail("simdgroup_barrier outside a kernel");
  }
  int t = tl_tid;
  if (g->mode == Mode::Fibers) {
    g->state[t] = kAtSimdBarrier;
    swapcontext(&g->contexts[t], &g->scheduler);
    return;
  }
  if (g->simd_returned[t / kSimdWidth].load() > 0) {
    fail("simdgroup_barrier after a thread of the SIMD group returned");
  }
  g->simd_barriers[t / kSimdWidth]->arrive_and_wait();
}

void simdgroup_operation(const SimdCall& call, float* result) {
  Group* g = tl_group;
  if (!g) {
    fail("simdgroup matrix operation outside a kernel");
  }
  const int t = tl_tid;
  const int s = t / kSimdWidth;
  if ((s + 1) * kSimdWidth > g->threads) {
    fail("simdgroup matrix operation in a SIMD group of fewer than 32 threads");
  }
  const int operands = operand_count(call.op);
  SimdLog& log = *g->simd[s];
  std::lock_guard<std::mutex> lock(log.mutex);
  const uint32_t i = log.done[t % kSimdWidth]++;
  if (i == log.records.size()) {
    SimdRecord& r = log.records.emplace_back();
    r.op = call.op;
    r.memory = call.memory;
    r.elements_per_row = call.elements_per_row;
    r.transpose = call.transpose;
    for (int m = 0; m < operands; ++m) {
      std::copy(call.operands[m], call.operands[m] + 64, r.operands + 64 * m);
    }
    run_simd_record(r);
  } else {
    const SimdRecord& r = log.records[i];
    bool same = r.op == call.op && r.memory == call.memory &&
        r.elements_per_row == call.elements_per_row &&
        r.transpose == call.transpose;
    for (int m = 0; m < operands && same; ++m) {
      same = std::memcmp(r.operands + 64 * m, call.operands[m], 256) == 0;
    }
    if (!same) {
      fail(
          "lanes of a SIMD group made different simdgroup matrix operations "
          "(each must make the same call, with the same matrices)");
    }
  }
  if (result) {
    std::copy(log.records[i].result, log.records[i].result + 64, result);
  }
}

Options options_from_env() {
  Options o;
  if (const char* m = std::getenv("METAL_EMU_MODE")) {
    if (std::strcmp(m, "threads") == 0) {
      o.mode = Mode::Threads;
    } else if (std::strcmp(m, "fibers") != 0) {
      throw std::runtime_error(
          "[metal emulator] METAL_EMU_MODE: fibers|threads");
    }
  }
  if (const char* w = std::getenv("METAL_EMU_WORKERS")) {
    o.workers = std::max(1, std::atoi(w));
  }
  return o;
}

void run_kernel(
    KernelEntry kernel,
    const uint32_t groups[3],
    const uint32_t threads[3],
    uint32_t threadgroup_bytes,
    void* const* buffers,
    int nbuffers,
    const Options& options) {
  LaunchArgs proto{};
  proto.nbuffers = nbuffers;
  std::copy(buffers, buffers + nbuffers, proto.buffers);
  std::copy(threads, threads + 3, proto.threads);
  run_grid(kernel, groups, threadgroup_bytes, proto, options);
}

void run_plan(const Plan& plan, const Bindings& b, const Options& options) {
  std::unique_ptr<char[]> work;
  if (plan.work_bytes) {
    work.reset(new char[plan.work_bytes]);
    std::memset(work.get(), 0xff, plan.work_bytes);
  }
  void* args[5] = {
      const_cast<void*>(b.a), const_cast<void*>(b.e), b.x, b.l, work.get()};
  for (const Dispatch& d : plan.steps) {
    for (Arg a : d.buffers) {
      if (!args[int(a)]) {
        throw std::runtime_error(
            "[metal emulator] " + d.kernel + ": a buffer is not bound");
      }
    }
    run_dispatch(d, args, options);
  }
}

} // namespace metal_emu
