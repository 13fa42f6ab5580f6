// Runs launch plans on the CPU: the execution model of launcher.h.
#include "launcher.h"

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
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

enum FiberState : uint8_t { kRunning, kAtBarrier, kDone };

// One threadgroup in flight.
struct Group {
  Mode mode;
  int threads = 0;
  KernelEntry kernel = nullptr;
  LaunchArgs args{};
  // Fibers.
  ucontext_t scheduler;
  std::vector<ucontext_t> contexts;
  std::vector<FiberState> state;
  // OS threads.
  std::unique_ptr<std::barrier<>> barrier;
  std::atomic<int> returned{0};
};

thread_local Group* tl_group = nullptr;
thread_local int tl_tid = 0;

void run_thread(Group& g, int t) {
  LaunchArgs a = g.args;
  const uint32_t* size = a.threads;
  a.tid[0] = uint32_t(t) % size[0];
  a.tid[1] = uint32_t(t) / size[0] % size[1];
  a.tid[2] = uint32_t(t) / (size[0] * size[1]);
  g.kernel(a);
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
    for (int r = 0; r < g.threads; ++r) {
      int t = reverse ? g.threads - 1 - r : r;
      if (g.state[t] == kDone) {
        continue;
      }
      g.state[t] = kRunning;
      tl_tid = t;
      swapcontext(&g.scheduler, &g.contexts[t]);
    }
    int done = int(std::count(g.state.begin(), g.state.end(), kDone));
    if (done == g.threads) {
      break;
    }
    if (done > 0) {
      fail("threadgroup_barrier not reached by every thread of the group");
    }
    reverse = !reverse;
  }
  tl_group = nullptr;
}

// OS threads: one thread per GPU thread, kept across the threadgroups this
// worker takes; thread 0 fetches the next threadgroup between two barriers.
void run_groups_threads(
    Group& g,
    std::atomic<uint64_t>& next,
    uint64_t groups,
    const uint32_t* grid,
    std::vector<char>& smem) {
  g.barrier = std::make_unique<std::barrier<>>(g.threads);
  uint64_t current = 0;
  auto body = [&](int t) {
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
        }
      }
      g.barrier->arrive_and_wait();
      if (current >= groups) {
        return;
      }
      run_thread(g, t);
      g.returned.fetch_add(1);
      g.barrier->arrive_and_wait();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(g.threads - 1);
  for (int t = 1; t < g.threads; ++t) {
    pool.emplace_back(body, t);
  }
  body(0);
  for (auto& th : pool) {
    th.join();
  }
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
  const uint64_t groups = uint64_t(d.groups[0]) * d.groups[1] * d.groups[2];
  const int threads = int(d.threads[0] * d.threads[1] * d.threads[2]);
  std::atomic<uint64_t> next{0};
  auto worker = [&] {
    std::vector<char> smem(std::max<uint32_t>(d.threadgroup_bytes, 16));
    Group g;
    g.mode = options.mode;
    g.threads = threads;
    g.kernel = find_kernel(d.kernel);
    g.args = proto;
    g.args.smem = d.threadgroup_bytes ? smem.data() : nullptr;
    if (options.mode == Mode::Threads) {
      run_groups_threads(g, next, groups, d.groups, smem);
      return;
    }
    FiberStacks stacks;
    for (;;) {
      uint64_t id = next.fetch_add(1);
      if (id >= groups) {
        return;
      }
      g.args.group[0] = uint32_t(id % d.groups[0]);
      g.args.group[1] = uint32_t(id / d.groups[0] % d.groups[1]);
      g.args.group[2] = uint32_t(id / (uint64_t(d.groups[0]) * d.groups[1]));
      std::memset(smem.data(), 0xff, smem.size());
      run_group_fibers(g, stacks);
    }
  };
  int workers = int(std::clamp<uint64_t>(options.workers, 1, groups));
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) {
    pool.emplace_back(worker);
  }
  worker();
  for (auto& th : pool) {
    th.join();
  }
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
