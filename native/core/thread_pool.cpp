// A persistent thread pool: nthreads-1 workers plus the calling thread. parallel_run() hands every thread
// the same closure with its own tid, then waits; workers spin briefly before sleeping so back-to-back ops
// (one training step issues hundreds) do not pay a futex wake-up each.
//
// Sleeping uses pthread condition variables directly: std::condition_variable::wait would raise the
// binary's libstdc++ floor to GLIBCXX_3.4.30 (GCC 12), which older distributions do not have.
//
// Default size: physical cores (SMT siblings share FMA units, so they slow GEMMs down), capped by the
// CPUs this process may run on.
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <exception>
#include <pthread.h>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "sffn/core.h"

namespace sffn {
namespace {

thread_local bool t_in_parallel = false;  // a kernel called from inside parallel_run runs serially

int allowed_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  unsigned n = std::thread::hardware_concurrency();
  return n ? (int)n : 1;
}

int detect_physical_cores() {
  // Count distinct (package, core) pairs among the CPUs Linux reports.
  std::set<std::pair<int, int>> cores;
  for (int cpu = 0; cpu < 4096; ++cpu) {
    std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream core(base + "core_id"), pkg(base + "physical_package_id");
    if (!core) {
      if (cpu > 0) break;
      continue;
    }
    int c = 0, p = 0;
    core >> c;
    if (pkg) pkg >> p;
    cores.insert({p, c});
  }
  int n = cores.empty() ? allowed_cpus() : (int)cores.size();
  int allowed = allowed_cpus();
  return n < allowed ? n : allowed;
}

class Pool {
 public:
  explicit Pool(int n) : n_(n) {
    for (int t = 1; t < n_; ++t) workers_.emplace_back([this, t] { loop(t); });
  }
  ~Pool() {
    pthread_mutex_lock(&mu_);
    stop_ = true;
    ++gen_;
    pthread_cond_broadcast(&cv_);
    pthread_mutex_unlock(&mu_);
    for (auto& w : workers_) w.join();
  }
  int size() const { return n_; }

  void run(const std::function<void(int, int)>& fn) {
    if (n_ == 1) {
      fn(0, 1);
      return;
    }
    pthread_mutex_lock(&mu_);
    fn_ = &fn;
    pending_.store(n_ - 1, std::memory_order_relaxed);
    gen_.fetch_add(1, std::memory_order_release);
    pthread_cond_broadcast(&cv_);
    pthread_mutex_unlock(&mu_);
    std::exception_ptr mine;
    try {
      fn(0, n_);
    } catch (...) {
      mine = std::current_exception();
    }
    // Wait for the workers: spin first, they are usually a few microseconds behind.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin > 20000) std::this_thread::yield();
    }
    fn_ = nullptr;
    std::exception_ptr theirs;
    std::swap(theirs, err_);
    if (mine) std::rethrow_exception(mine);
    if (theirs) std::rethrow_exception(theirs);
  }

 private:
  void loop(int tid) {
    uint64_t seen = 0;
    for (;;) {
      // Spin a little on the generation counter, then sleep on the condition variable.
      int spin = 0;
      while (gen_.load(std::memory_order_acquire) == seen && spin < 40000) ++spin;
      if (gen_.load(std::memory_order_acquire) == seen) {
        pthread_mutex_lock(&mu_);
        while (gen_.load(std::memory_order_acquire) == seen) pthread_cond_wait(&cv_, &mu_);
        pthread_mutex_unlock(&mu_);
      }
      seen = gen_.load(std::memory_order_acquire);
      if (stop_) return;
      t_in_parallel = true;
      try {
        (*fn_)(tid, n_);
      } catch (...) {
        // An exception must never escape a worker (std::terminate); hand it to the caller instead.
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!err_) err_ = std::current_exception();
      }
      t_in_parallel = false;
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  pthread_mutex_t mu_ = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv_ = PTHREAD_COND_INITIALIZER;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int, int)>* fn_ = nullptr;
  bool stop_ = false;
  std::mutex err_mu_;
  std::exception_ptr err_;
};

std::mutex g_run_mu;  // serialises parallel_run across host threads (main thread, async workers)
Pool* g_pool = nullptr;
int g_threads = 0;

}  // namespace

int physical_cores() {
  static const int n = detect_physical_cores();
  return n;
}

int num_threads() { return g_threads > 0 ? g_threads : physical_cores(); }

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lk(g_run_mu);
  if (n < 1) n = 1;
  if (n == num_threads() && g_pool) return;
  delete g_pool;
  g_pool = nullptr;
  g_threads = n;
}

void parallel_run(const std::function<void(int, int)>& fn) {
  if (t_in_parallel) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> lk(g_run_mu);
  struct Flag {
    Flag() { t_in_parallel = true; }
    ~Flag() { t_in_parallel = false; }
  } flag;
  if (!g_pool || g_pool->size() != num_threads()) {
    delete g_pool;
    g_pool = new Pool(num_threads());
  }
  g_pool->run(fn);
}

}  // namespace sffn
