// MobileDL's parallel launcher for TVM kernels (see parallel.py for why and how it is installed).
//
// TVM's generated code runs a parallel loop as `launch(lambda, cdata, num_task)`; task i of
// num_task does iterations [i * step, (i + 1) * step). TVM's own pool hands task i to worker i
// and the caller waits for every worker, so a worker descheduled for a few milliseconds holds
// up the whole kernel. Here the tasks are claimed from one counter by whoever is running (the
// caller included), as in ONNX Runtime's and Eigen's ParallelFor: a late worker finds the work
// done and the caller only waits for tasks already started.
//
// Claims are a 64-bit ticket (generation << 32 | next task) changed by compare-and-swap, so a
// worker that wakes after its job ended can never run a task of the next one.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
static inline void CpuRelax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void CpuRelax() { asm volatile("yield" ::: "memory"); }
#else
static inline void CpuRelax() {}
#endif

// A waiting thread gives its core away (sched_yield) after MDL_TVM_PAUSES pauses (1024,
// tens of microseconds), as TVM's pool yields: with a core taken by another process, the
// thread it waits for may be queued behind it on the same core. Measured, SqueezeNet-style,
// 2 threads: pausing only (up to 4096 / 200000 pauses), 2x slower than TVM's pool with one
// core busy; yielding after 64 pauses loses most of the gain under 3-in-10 ms bursts
// (0.90x of TVM's pool's time, 1024: 0.75x; busy 0.96x / 0.97x).
static const long kPauses = [] {
  const char* v = getenv("MDL_TVM_PAUSES");
  return v ? atol(v) : 1024L;
}();
static inline void Relax(long i) {
  if (i < kPauses) CpuRelax(); else std::this_thread::yield();
}

extern "C" {
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
}

namespace {

struct Job {
  FTVMParallelLambda f;
  void* cdata;
  int num_task;
};

int EnvInt(const char* name, int fallback) {
  const char* v = getenv(name);
  int n = v ? atoi(v) : 0;
  return n > 0 ? n : fallback;
}

class Pool {
 public:
  Pool()
      : threads_(EnvInt("TVM_NUM_THREADS", EnvInt("OMP_NUM_THREADS", 1))),
        tasks_(threads_ * EnvInt("MDL_TVM_TASKS_PER_THREAD", 4)) {
    for (int i = 1; i < threads_; ++i) std::thread([this] { Work(); }).detach();
  }

  int threads() const { return threads_; }
  int64_t worker_tasks() const { return worker_tasks_.load(); }

  int Launch(FTVMParallelLambda f, void* cdata, int num_task) {
    if (num_task <= 0) num_task = tasks_;
    // one thread, or a launch inside a task or from a second caller thread: run it here
    if (threads_ == 1 || busy_.exchange(true)) {
      TVMParallelGroupEnv env{nullptr, num_task};
      int err = 0;
      for (int i = 0; i < num_task; ++i) err |= f(i, &env, cdata);
      return err ? -1 : 0;
    }
    uint32_t gen = static_cast<uint32_t>(ticket_.load() >> 32) + 1;
    jobs_[gen & 3] = Job{f, cdata, num_task};
    done_.store(0, std::memory_order_relaxed);
    failed_.store(0, std::memory_order_relaxed);
    // seq_cst store, then load: with the worker's seq_cst sleepers_ increment before its
    // last look at ticket_, either it sees this job or this sees it asleep (no lost wakeup)
    ticket_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    RunTasks(gen);
    for (long i = 0; done_.load(std::memory_order_acquire) < num_task; ++i) {
      Relax(i);
    }
    int err = failed_.load();
    busy_.store(false);
    return err ? -1 : 0;
  }

 private:
  int RunTasks(uint32_t gen) {  // returns how many tasks this thread ran
    int ran = 0;
    uint64_t cur = ticket_.load(std::memory_order_acquire);
    while (static_cast<uint32_t>(cur >> 32) == gen) {
      const Job job = jobs_[gen & 3];
      uint32_t task = static_cast<uint32_t>(cur);
      if (static_cast<int>(task) >= job.num_task) break;
      // a failed exchange reloads cur: another thread claimed it, or a new job began
      if (!ticket_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) continue;
      TVMParallelGroupEnv env{nullptr, job.num_task};
      if (job.f(static_cast<int>(task), &env, job.cdata) != 0) failed_.store(1);
      done_.fetch_add(1, std::memory_order_acq_rel);
      ++ran;
      cur = ticket_.load(std::memory_order_acquire);
    }
    return ran;
  }

  void Work() {
    uint32_t seen = 0;
    const long spin = EnvInt("MDL_TVM_SPIN", 200000);
    for (;;) {
      uint32_t gen;
      long i = 0;
      while ((gen = static_cast<uint32_t>(ticket_.load(std::memory_order_acquire) >> 32)) ==
             seen) {
        if (++i < spin) {
          Relax(i);
          continue;
        }
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1);
        cv_.wait(lock, [&] { return static_cast<uint32_t>(ticket_.load() >> 32) != seen; });
        sleepers_.fetch_sub(1);
      }
      seen = gen;
      worker_tasks_.fetch_add(RunTasks(gen), std::memory_order_relaxed);
    }
  }

  const int threads_, tasks_;
  Job jobs_[4] = {};
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int> done_{0}, failed_{0}, sleepers_{0};
  std::atomic<int64_t> worker_tasks_{0};
  std::atomic<bool> busy_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

// never destroyed: detached workers may still wait on it while the process exits
Pool& ThePool() {
  static Pool* pool = new Pool();
  return *pool;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int MDLParallelLaunch(
    FTVMParallelLambda f, void* cdata, int num_task) {
  return ThePool().Launch(f, cdata, num_task);
}

extern "C" __attribute__((visibility("default"))) int MDLParallelThreads() {
  return ThePool().threads();
}

// tasks run by the pool's workers (not by callers) since the process started
extern "C" __attribute__((visibility("default"))) int64_t MDLParallelWorkerTasks() {
  return ThePool().worker_tasks();
}
