// The emulator's SIMD-group matrix operations against their Metal semantics
// (layouts, transposes, device and threadgroup memory, the products), and the
// rules it must report when a kernel breaks them. Part of the self-test
// (selftest.cpp); each broken rule runs in a child process, which must fail
// with the expected report.
#include "launcher.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "metal_emu.h"

extern char** environ;

#if defined(__SANITIZE_THREAD__)
#define SIMD_CHECK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SIMD_CHECK_TSAN 1
#endif
#endif
#ifndef SIMD_CHECK_TSAN
#define SIMD_CHECK_TSAN 0
#endif

namespace simdgroup_check {

using namespace metal;
using metal_emu::LaunchArgs;

// Inputs: A (8 x 8, row stride 11) at 0, B (8 x 8, row stride 9) at 88.
constexpr int kInputs = 88 + 72;
// Threadgroup memory: B as in the input, then an 8 x 8 at row stride 10.
constexpr uint32_t kSemanticsThreadgroupBytes = (72 + 80) * 4;

float input_value(int i) {
  return float((i * 7) % 13 - 6) / 4.0f; // exact products and sums
}

// SIMD group 0: D = A B^T + 1/4 (A from device memory, B^T by a transposed
// load from threadgroup memory) and (2 A)^T by a transposed store; SIMD
// group 1: B B through threadgroup memory, read back by the lanes.
void semantics_kernel(const LaunchArgs& c) {
  const float* in = static_cast<const float*>(c.buffers[0]);
  float* out = static_cast<float*>(c.buffers[1]);
  float* tg = reinterpret_cast<float*>(c.smem);
  for (uint i = c.tid[0]; i < 72; i += 64) {
    tg[i] = in[88 + i];
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (c.simd_group == 0) {
    simdgroup_float8x8 a, bt, d, e;
    simdgroup_float8x8 quarter =
        make_filled_simdgroup_matrix<float, 8, 8>(0.25f);
    simdgroup_float8x8 two(2.0f);
    simdgroup_load(a, in, 11);
    simdgroup_load(bt, tg, 9, 0, true);
    simdgroup_multiply_accumulate(d, a, bt, quarter);
    simdgroup_store(d, out, 8);
    simdgroup_multiply(e, a, two);
    simdgroup_store(e, out + 64, 8, 0, true);
  } else {
    simdgroup_float8x8 b, f;
    simdgroup_load(b, tg, 9);
    simdgroup_multiply(f, b, b);
    simdgroup_store(f, tg + 72, 10);
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (int q = 0; q < 2; ++q) {
      int e = 2 * int(c.simd_lane) + q;
      out[128 + e] = tg[72 + e / 8 * 10 + e % 8];
    }
  }
}

// Broken rules, one kernel each (buffers: the inputs, then 64 outputs).
void lane_skips(const LaunchArgs& c) {
  simdgroup_float8x8 a;
  if (c.simd_lane != 5) {
    simdgroup_load(a, static_cast<const float*>(c.buffers[0]), 8);
  }
}

void lanes_differ(const LaunchArgs& c) {
  simdgroup_float8x8 a;
  const float* in = static_cast<const float*>(c.buffers[0]);
  simdgroup_load(a, in + (c.simd_lane == 5 ? 1 : 0), 8);
}

void partial_simd_barrier(const LaunchArgs& c) {
  if (c.simd_lane < 16) {
    simdgroup_barrier(mem_flags::mem_threadgroup);
  }
}

void short_simd_group(const LaunchArgs& c) {
  simdgroup_float8x8 a;
  simdgroup_load(a, static_cast<const float*>(c.buffers[0]), 8);
}

// SIMD group 1 stores a matrix that SIMD group 0 loads, with no
// threadgroup_barrier between.
void missing_barrier(const LaunchArgs& c) {
  float* tg = reinterpret_cast<float*>(c.smem);
  simdgroup_float8x8 a;
  if (c.simd_group == 1) {
    simdgroup_load(a, static_cast<const float*>(c.buffers[0]), 8);
    simdgroup_store(a, tg, 8);
  } else {
    simdgroup_load(a, tg, 8);
    simdgroup_store(a, static_cast<float*>(c.buffers[1]), 8);
  }
}

struct Fault {
  const char* name;
  metal_emu::KernelEntry kernel;
  uint32_t threads;
  const char* report; // what the child must print
  bool fibers, threads_mode; // where it is checked
};

// In threads mode a partial simdgroup_barrier waits forever (as on a GPU);
// a missing barrier is ThreadSanitizer's to report there, by chance only
// without it.
const Fault kFaults[] = {
    {"lane_skips", lane_skips, 32, "not made by every lane", true, true},
    {"lanes_differ",
     lanes_differ,
     32,
     "made different simdgroup matrix operations",
     true,
     true},
    {"partial_simd_barrier",
     partial_simd_barrier,
     32,
     "simdgroup_barrier not reached by every thread",
     true,
     false},
    {"short_simd_group",
     short_simd_group,
     48,
     "fewer than 32 threads",
     true,
     true},
    {"missing_barrier",
     missing_barrier,
     64,
     SIMD_CHECK_TSAN ? "data race" : "wrong result",
     true,
     bool(SIMD_CHECK_TSAN)},
};

std::vector<float> inputs() {
  std::vector<float> in(kInputs);
  for (int i = 0; i < kInputs; ++i) {
    in[i] = input_value(i);
  }
  return in;
}

void run(
    metal_emu::KernelEntry kernel,
    uint32_t threads,
    uint32_t threadgroup_bytes,
    std::vector<float>& in,
    std::vector<float>& out) {
  const uint32_t groups[3] = {1, 1, 1};
  const uint32_t size[3] = {threads, 1, 1};
  void* buffers[2] = {in.data(), out.data()};
  metal_emu::run_kernel(
      kernel,
      groups,
      size,
      threadgroup_bytes,
      buffers,
      2,
      metal_emu::options_from_env());
}

// The products of small multiples of 1/4 are exact: the results must be.
int check_semantics() {
  std::vector<float> in = inputs();
  std::vector<float> out(192, -1.0f);
  run(semantics_kernel, 64, kSemanticsThreadgroupBytes, in, out);
  auto a = [&](int i, int j) { return double(in[i * 11 + j]); };
  auto b = [&](int i, int j) { return double(in[88 + i * 9 + j]); };
  int bad = 0;
  for (int i = 0; i < 8; ++i) {
    for (int j = 0; j < 8; ++j) {
      double d = 0.25, f = 0.0;
      for (int k = 0; k < 8; ++k) {
        d += a(i, k) * b(j, k);
        f += b(i, k) * b(k, j);
      }
      bad += out[i * 8 + j] != d;
      bad += out[64 + j * 8 + i] != 2.0 * a(i, j);
      bad += out[128 + i * 8 + j] != f;
    }
  }
  std::printf(
      "%s simdgroup operations: loads, stores, products (%d wrong)\n",
      bad ? "FAIL" : "ok  ",
      bad);
  return bad ? 1 : 0;
}

// Runs one broken rule (in a child process); exits non-zero through the
// emulator's report, or with "wrong result" when the outputs are wrong.
int run_fault(const char* name) {
  for (const Fault& f : kFaults) {
    if (std::string(name) != f.name) {
      continue;
    }
    std::vector<float> in = inputs();
    std::vector<float> out(64, -1.0f);
    run(f.kernel, f.threads, 256, in, out);
    if (f.kernel == missing_barrier &&
        !std::equal(out.begin(), out.end(), in.begin())) {
      std::printf("wrong result\n");
      return 1;
    }
    return 0;
  }
  std::fprintf(stderr, "no fault %s\n", name);
  return 2;
}

// Each broken rule of the current mode in a child process (this program
// again): it must fail and print its report.
int check_faults() {
  const char* self = "/proc/self/exe";
  const bool threads =
      metal_emu::options_from_env().mode == metal_emu::Mode::Threads;
  int failures = 0;
  for (const Fault& f : kFaults) {
    if (!(threads ? f.threads_mode : f.fibers)) {
      continue;
    }
    char log[] = "/tmp/metal-emu-fault.XXXXXX";
    int fd = mkstemp(log);
    if (fd < 0) {
      std::perror("mkstemp");
      return 1;
    }
    close(fd);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::string fault = "fault";
    std::string name = f.name;
    char* argv[] = {
        const_cast<char*>(self), fault.data(), name.data(), nullptr};
    pid_t pid;
    int status = 0;
    bool spawned =
        posix_spawn(&pid, self, &actions, nullptr, argv, environ) == 0 &&
        waitpid(pid, &status, 0) == pid;
    posix_spawn_file_actions_destroy(&actions);
    std::stringstream text;
    text << std::ifstream(log).rdbuf();
    unlink(log);
    bool failed = spawned && !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    bool ok = failed && text.str().find(f.report) != std::string::npos;
    failures += !ok;
    std::printf(
        "%s broken rule %-22s reported: %s\n",
        ok ? "ok  " : "FAIL",
        f.name,
        ok ? f.report : "no (or not as expected)");
    if (!ok) {
      std::printf("%s\n", text.str().c_str());
    }
  }
  return failures;
}

} // namespace simdgroup_check

int check_simdgroup_emulation() {
  return simdgroup_check::check_semantics() + simdgroup_check::check_faults();
}

int run_simdgroup_fault(const char* name) {
  return simdgroup_check::run_fault(name);
}
