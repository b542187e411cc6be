// The LSTM recurrence on CPU as two XLA FFI custom calls (see lstm_jax/native/__init__.py).
//
// Forward: given the hoisted input projection zx [T, B, 4H] (no bias), for t in scan order
//     z_t = zx[t] + bias + (h_{t-1} * rmask) @ rk            rk [H, 4H], gates i, f, g, o (Keras order)
//     i, f, o = sigmoid(z_i, z_f, z_o); g = tanh(z_g)
//     c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)               (a masked row keeps h, c and outputs 0)
// writing the activated gates over zx (the call aliases them), h_{t-1} and c_{t-1} packed as
// hc [T, B, 2H] for the backward pass, and the outputs [T, B, H].
// Backward: the state-only backward recurrence of the "fused" impl in lstm_jax/core.py, writing the
// pre-activation gradients dz [T, B, 4H] over the gates, and the bias's gradient summed step by step; the
// weight gradients are single matmuls that XLA computes afterwards, or (core.py: small layers) sums the
// call makes step by step too (the attribute weight_grads, run_backward).
// The "x" calls (LstmForwardX, LstmBackwardX) take the inputs xs [T, B, F] instead of zx and project them in
// the same per-step matmul: z_t = bias + [x_t, h_{t-1} * rmask] @ [kernel; rk], and backward
// [dx_t, dh] = dz_t @ [kernel; rk]^T (core.py uses them when [kernel; rk] is small against the L2 cache).
// LstmForwardIds takes an embedding folded into the projection, table [V, 4H] and ids [T, B] (zx[t] =
// table[ids[t]], read in the step), and ScatterRows sums dz back into the table's rows (its gradient).
//
// Both are the same mathematics as core.py's "fused" impl (parity-tested in tests/test_native.py). The
// point is the loop: one call runs all T steps, each step one register-blocked matmul and one pass of
// elementwise math per row block, with no per-kernel dispatch. Batch rows are independent through the
// whole recurrence, so the batch is split into `threads` row blocks, each advanced one timestep at a time
// by the calling thread or by a helper task on XLA's thread pool that takes it over (RowBlocks).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// VL floats per vector; the matmul's register tile is TILE_ROWS rows x TILE_VECS vectors of accumulators,
// sized to the vector registers: 6 x 4 = 24 of AVX-512's 32, 6 x 2 = 12 of AVX2's (and SSE's) 16. On an
// AVX2 machine (AMD EPYC, Zen 3) the 6 x 4 tile spilled and ran 2.2-2.8x slower than 6 x 2 (standalone
// timing of the step's matmul shapes; 4 x 3, 3 x 4, 4 x 2, 5 x 2 and 12 x 1 were also slower).
#if defined(__AVX512F__)
constexpr int VL = 16, TILE_ROWS = 6, TILE_VECS = 4;
#elif defined(__AVX__)
constexpr int VL = 8, TILE_ROWS = 6, TILE_VECS = 2;
#else
constexpr int VL = 4, TILE_ROWS = 6, TILE_VECS = 2;
#endif
typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));  // unaligned loads and stores

// The kernel's own float arrays (the matmuls' scratch rows, padded weight copies, weight-gradient sums,
// the generation state) start on a 64-byte boundary, so that with row lengths of whole vectors (callers
// pad to VL floats) no vector load or store of a matmul splits across two cache lines; glibc's malloc
// gives 16 bytes, XLA's buffers are aligned already. On an Intel Xeon (AVX-512) host, shape A's
// backward calls' matmuls (rk^T padded to [1200, 304], a copy) ran at 140 GFLOP/s a thread against 126,
// and the training steps of shapes B, C and D took 2-7% less (benchmarks/README.md, 2026-12-07). Only
// arrays made once per call: glibc's aligned allocation is slow, so those made every step are not.
template <class T>
struct LineAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  LineAligned() = default;
  template <class U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
using Floats = std::vector<float, LineAligned<float>>;

// The same alignment for an array left unwritten until it is filled in full (no zeroing pass first).
struct LineAlignedDelete {
  void operator()(float* p) const { ::operator delete[](p, LineAligned<float>::kAlign); }
};
using UninitFloats = std::unique_ptr<float[], LineAlignedDelete>;
inline UninitFloats uninit_floats(std::size_t n) {
  return UninitFloats(new (LineAligned<float>::kAlign) float[n]);
}

inline vf loadu(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void storeu(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }

// C[MR rows, NV * VL cols] += A[MR, K] @ W[K, NV * VL]; row strides lda, ldw, ldc.
template <int MR, int NV>
inline void micro(const float* __restrict A, int64_t lda, const float* __restrict W, int64_t ldw,
                  float* __restrict C, int64_t ldc, int64_t K) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = loadu(C + r * ldc + v * VL);
  for (int64_t k = 0; k < K; ++k) {
    vf w[NV];
    for (int v = 0; v < NV; ++v) w[v] = loadu(W + k * ldw + v * VL);
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * w[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) storeu(C + r * ldc + v * VL, acc[r][v]);
}

// C[M, N] += A[M, K] @ W[K, N] (row-major, row strides lda, ldw, ldc); N a multiple of VL (callers pad).
// Column blocks outside, row blocks inside: a [K, NV * VL] panel of W stays in cache while every row block
// of A passes over it, so W (up to ~1.5 MB for H = 300) is read from memory once per call.
template <int NV, int MR>
inline void panel_block(const float* A, int64_t lda, const float* W, int64_t ldw, float* C,
                        int64_t ldc, int64_t M, int64_t K) {
  int64_t i = 0;
  for (; i + MR <= M; i += MR) micro<MR, NV>(A + i * lda, lda, W, ldw, C + i * ldc, ldc, K);
  if (i + 4 <= M) {
    micro<4, NV>(A + i * lda, lda, W, ldw, C + i * ldc, ldc, K);
    i += 4;
  }
  if (i + 2 <= M) {
    micro<2, NV>(A + i * lda, lda, W, ldw, C + i * ldc, ldc, K);
    i += 2;
  }
  if (i < M) micro<1, NV>(A + i * lda, lda, W, ldw, C + i * ldc, ldc, K);
}

// The panel in blocks of KC rows of W (64 x 4 vectors = 16 KB with AVX-512), so each block stays in L1
// while every row tile of A passes over it (measured 8-15% faster than whole panels from L2).
constexpr int64_t KC = 64;

template <int NV, int MR>
inline void panel(const float* A, int64_t lda, const float* W, int64_t ldw, float* C, int64_t ldc,
                  int64_t M, int64_t K) {
  for (int64_t k0 = 0; k0 < K; k0 += KC)
    panel_block<NV, MR>(A + k0, lda, W + k0 * ldw, ldw, C, ldc, M, std::min(KC, K - k0));
}

void gemm_acc(const float* A, int64_t lda, const float* W, int64_t ldw, float* C, int64_t ldc,
              int64_t M, int64_t K, int64_t N) {
  // TILE_ROWS x TILE_VECS tiles (with AVX-512 6 x 4: 24 accumulators; 4 x 4 ran at half the speed), then
  // 8 x 2 (AVX-512 only) and 8 x 1 for narrow panels: enough independent accumulators in flight to hide
  // the FMA latency without spilling registers.
  int64_t j = 0;
  for (; j + TILE_VECS * VL <= N; j += TILE_VECS * VL)
    panel<TILE_VECS, TILE_ROWS>(A, lda, W + j, ldw, C + j, ldc, M, K);
  if constexpr (TILE_VECS > 2)
    for (; j + 2 * VL <= N; j += 2 * VL) panel<2, 8>(A, lda, W + j, ldw, C + j, ldc, M, K);
  for (; j + VL <= N; j += VL) panel<1, 8>(A, lda, W + j, ldw, C + j, ldc, M, K);
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Asks for `n` floats from `p` to be brought into cache (the next step's block of a [T, B, *] array).
inline void prefetch(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 3);
}

// tanh as Eigen's (and XLA:CPU's) rational approximation for float; branch-free so loops vectorize.
inline float tanh_f(float a) {
  const float x = a > 7.99881172180175781f ? 7.99881172180175781f
                  : (a < -7.99881172180175781f ? -7.99881172180175781f : a);
  const float x2 = x * x;
  float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  const float r = p / q;
  return (a < 0.0004f && a > -0.0004f) ? a : r;
}

inline float sigmoid_f(float x) { return 0.5f * tanh_f(0.5f * x) + 0.5f; }

struct Dims {
  int64_t T, B, H;
  int64_t F = 0;  // input features projected inside the step (the "x" calls); 0: zx is given
};

// Timing of the training calls, for profiling (`lstm_jax.native.stats`, `python -m benchmarks.profile_step
// --native-stats`): off unless turned on, and then per call kind and shape it sums the calls' wall time,
// the time the threads spent in their steps and in the steps' matmuls, and how late helper tasks started.
// Off, it costs one relaxed load per step.
std::atomic<bool> g_stats_on{false};
thread_local int64_t t_gemm_ns = 0;  // this thread's time in the steps' matmuls (while stats are on)

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline bool stats_on() { return g_stats_on.load(std::memory_order_relaxed); }

struct CallStats {
  int64_t calls = 0, wall_ns = 0, step_ns = 0, gemm_ns = 0;
  int64_t helpers = 0, helpers_started = 0, helper_start_ns = 0;  // start: from the call's start
};
std::mutex g_stats_mu;
std::map<std::string, CallStats> g_stats;

// One call's figures, from parallel_rows to the stats table.
struct RowsTiming {
  int64_t step_ns = 0, gemm_ns = 0, helpers = 0, helpers_started = 0, helper_start_ns = 0;
};

void record_call(const char* kind, const Dims& d, int64_t t0, const RowsTiming& r) {
  const int64_t wall = now_ns() - t0;
  const std::string key = std::string(kind) + " T=" + std::to_string(d.T) + " B=" +
                          std::to_string(d.B) + " F=" + std::to_string(d.F) +
                          " H=" + std::to_string(d.H);
  std::lock_guard<std::mutex> lock(g_stats_mu);
  CallStats& s = g_stats[key];
  s.calls += 1;
  s.wall_ns += wall;
  s.step_ns += r.step_ns;
  s.gemm_ns += r.gemm_ns;
  s.helpers += r.helpers;
  s.helpers_started += r.helpers_started;
  s.helper_start_ns += r.helper_start_ns;
}

// Times one matmul of a step into t_gemm_ns when stats are on.
template <typename F>
inline void timed_gemm(F&& f) {
  if (!stats_on()) {
    f();
    return;
  }
  const int64_t t0 = now_ns();
  f();
  t_gemm_ns += now_ns() - t0;
}

// XLA:CPU computes with denormals flushed to zero (FTZ and DAZ); the kernel's threads do the same, so
// results match XLA's and a gradient fading over a long sequence does not hit the slow denormal path.
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

// The threads of one generation call on different CPUs (Linux). On 2 cores XLA's pool often ran the
// helper task on the calling thread's CPU (a debugging build printed sched_getcpu of both, and the
// caller's involuntary context switches: 20-240 in such a 200-token call, 0-2 otherwise), and the
// scheduler left the two sharing one core while the other idled: those calls took 21-51 ms instead of
// 12-15. A helper on a CPU the call already holds moves itself off them (its CPU mask without them, when
// any CPU is left) and gets its mask back when its work ends (benchmarks/README.md, 2026-12-03).
// LSTM_JAX_NATIVE_SPREAD=0, read when the call starts, turns this off. (The training calls' helpers
// showed no difference either way, and are left as they are.)
class CpuSpread {
 public:
  CpuSpread() {
    const char* env = std::getenv("LSTM_JAX_NATIVE_SPREAD");
    off_ = env != nullptr && std::strcmp(env, "0") == 0;
  }

  // The calling thread's CPU joins the set.
  void hold() {
#if defined(__linux__)
    const int cpu = sched_getcpu();
    if (cpu >= 0 && cpu < 64) used_.fetch_or(uint64_t{1} << cpu, std::memory_order_acq_rel);
#endif
  }

  class Away {
   public:
    explicit Away(CpuSpread& s) {
#if defined(__linux__)
      const int cpu = sched_getcpu();
      const uint64_t used = s.used_.load(std::memory_order_acquire);
      if (!s.off_ && cpu >= 0 && cpu < 64 && (used >> cpu & 1) &&
          sched_getaffinity(0, sizeof(saved_), &saved_) == 0) {
        cpu_set_t m = saved_;
        for (int c = 0; c < 64; ++c)
          if (used >> c & 1) CPU_CLR(c, &m);
        moved_ = CPU_COUNT(&m) > 0 && sched_setaffinity(0, sizeof(m), &m) == 0;
      }
#endif
      s.hold();
    }
    ~Away() {
#if defined(__linux__)
      if (moved_) sched_setaffinity(0, sizeof(saved_), &saved_);
#endif
    }
    Away(const Away&) = delete;
    Away& operator=(const Away&) = delete;

   private:
#if defined(__linux__)
    cpu_set_t saved_;
#endif
    bool moved_ = false;
  };

 private:
  std::atomic<uint64_t> used_{0};
  bool off_ = false;
};

// One row block's recurrence, advanced one timestep at a time so that it can change threads between
// steps: `step_at(s)` runs the s-th step in scan order, `finish()` writes the final state after the last.
struct RowStepper {
  int64_t T = 0, s = 0;
  int64_t step_ns = 0, gemm_ns = 0;  // with stats on: time in the steps, and in their matmuls
  std::function<void(int64_t)> step_at;
  std::function<void()> finish;
  bool finished() const { return s >= T; }
  void step() {
    if (!stats_on()) {
      step_at(s++);
      return;
    }
    const int64_t t0 = now_ns(), g0 = t_gemm_ns;
    step_at(s++);
    step_ns += now_ns() - t0;
    gemm_ns += t_gemm_ns - g0;
  }
};

// The row blocks of one call. The calling thread steps every block it still holds in turn (step t of
// block 0, of block 1, ..., then step t + 1); a helper task, whenever it starts, claims a block that the
// caller is not stepping at that moment and runs its remaining steps. So a helper that starts late (its
// thread pool busy with other XLA work) takes over from where the caller is, and one that never starts
// only means the caller steps every block; the call never waits on the pool. (With whole blocks claimed
// up front, a helper starting 26 ms late left the caller running both of shape A's blocks: its last
// backward call took 35-39 ms instead of 17-20.) A helper that starts after the call returned finds no
// block left (it keeps this state alive through its shared_ptr and never touches a finished block).
struct RowBlocks {
  enum : int { kFree = 0, kCaller = 1, kHelper = 2, kDone = 3 };
  std::vector<RowStepper> blocks;
  std::unique_ptr<std::atomic<int>[]> owner;
  std::atomic<int64_t> done{0};

  explicit RowBlocks(std::vector<RowStepper> b)
      : blocks(std::move(b)), owner(new std::atomic<int>[blocks.size()]) {
    for (size_t k = 0; k < blocks.size(); ++k) owner[k].store(kFree, std::memory_order_relaxed);
  }

  // Ends block k (its last step done by the thread holding it).
  void end(size_t k) {
    blocks[k].finish();
    owner[k].store(kDone, std::memory_order_release);
    done.fetch_add(1, std::memory_order_acq_rel);
  }

  void caller() {
    for (bool stepped = true; stepped;) {
      stepped = false;
      for (size_t k = 0; k < blocks.size(); ++k) {
        int expect = kFree;
        if (!owner[k].compare_exchange_strong(expect, kCaller, std::memory_order_acquire)) continue;
        stepped = true;
        RowStepper& b = blocks[k];
        if (!b.finished()) b.step();
        if (b.finished())
          end(k);
        else
          owner[k].store(kFree, std::memory_order_release);
      }
    }
    while (done.load(std::memory_order_acquire) < static_cast<int64_t>(blocks.size()))
      std::this_thread::yield();
  }

  void helper() {
    for (;;) {
      bool busy = false;  // a block the caller is stepping right now (free again within one step)
      for (size_t k = blocks.size(); k-- > 0;) {
        int expect = kFree;
        if (owner[k].compare_exchange_strong(expect, kHelper, std::memory_order_acquire)) {
          RowStepper& b = blocks[k];
          while (!b.finished()) b.step();
          end(k);
          return;
        }
        busy = busy || expect == kCaller;
      }
      if (!busy) return;
      std::this_thread::yield();
    }
  }
};

// Tests delay the helpers ($LSTM_JAX_NATIVE_TEST_HELPER_DELAY_US) to make them join mid-call.
int64_t test_helper_delay_us() {
  const char* env = std::getenv("LSTM_JAX_NATIVE_TEST_HELPER_DELAY_US");
  return env ? std::atoll(env) : 0;
}

// Runs the recurrence of `threads` contiguous row blocks of [0, B) (multiples of 4 rows where possible),
// `make(row0, row1)` giving each block's stepper: `spawn(task)` starts `threads - 1` helper tasks (on XLA's
// intra-op thread pool, or new threads), the calling thread works too (see RowBlocks), and returns when
// every block is done. Each row's arithmetic does not depend on which thread runs it.
template <typename Make, typename Spawn>
RowsTiming parallel_rows(int64_t B, int64_t threads, Make make, Spawn spawn) {
  FlushDenormals flush;
  RowsTiming timing;
  if (B <= 0) return timing;  // no rows, no blocks (and no division by a block size of 0)
  threads = std::max<int64_t>(1, std::min<int64_t>(threads, B));
  const int64_t per = ((B + threads - 1) / threads + 3) / 4 * 4;
  const int64_t nblocks = (B + per - 1) / per;
  std::vector<RowStepper> blocks;
  for (int64_t k = 0; k < nblocks; ++k) blocks.push_back(make(k * per, std::min(B, (k + 1) * per)));
  if (nblocks == 1) {
    while (!blocks[0].finished()) blocks[0].step();
    blocks[0].finish();
    timing.step_ns = blocks[0].step_ns;
    timing.gemm_ns = blocks[0].gemm_ns;
    return timing;
  }
  auto job = std::make_shared<RowBlocks>(std::move(blocks));
  const int64_t delay_us = test_helper_delay_us();
  const bool timed = stats_on();
  const int64_t t0 = timed ? now_ns() : 0;
  // With stats on, each helper's start from t0 (-1: not started); shared, as a helper may start after
  // the call. Not allocated otherwise.
  std::shared_ptr<std::vector<std::atomic<int64_t>>> starts;
  if (timed) {
    starts = std::make_shared<std::vector<std::atomic<int64_t>>>(nblocks);
    for (auto& v : *starts) v.store(-1, std::memory_order_relaxed);
  }
  for (int64_t k = 1; k < nblocks; ++k)
    spawn([job, delay_us, timed, t0, starts, k] {
      if (timed) (*starts)[k].store(now_ns() - t0, std::memory_order_relaxed);
      if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
      FlushDenormals flush;
      job->helper();
    });
  job->caller();
  if (timed) {
    for (const RowStepper& b : job->blocks) {
      timing.step_ns += b.step_ns;
      timing.gemm_ns += b.gemm_ns;
    }
    timing.helpers = nblocks - 1;
    for (int64_t k = 1; k < nblocks; ++k) {
      const int64_t start = (*starts)[k].load(std::memory_order_relaxed);
      if (start >= 0) {
        timing.helpers_started += 1;
        timing.helper_start_ns += start;
      }
    }
  }
  return timing;
}

// Helper tasks as new threads (when no XLA thread pool is at hand); none if a thread cannot be created.
struct NewThreads {
  std::vector<std::thread> started;
  template <typename T>
  void operator()(T task) {
    try {
      started.emplace_back(std::move(task));
    } catch (const std::system_error&) {  // the caller runs the block instead
    }
  }
  ~NewThreads() {
    for (auto& th : started) th.join();
  }
};

// One row of the forward step: the gates from the pre-activations z [4H] into acts [4H]; h, c updated
// (unless masked), the output written.
void forward_row(const float* __restrict z, float* __restrict acts, float* __restrict h,
                 float* __restrict c, float* __restrict out, bool real, int64_t H) {
  for (int64_t j = 0; j < 2 * H; ++j) acts[j] = sigmoid_f(z[j]);
  for (int64_t j = 2 * H; j < 3 * H; ++j) acts[j] = tanh_f(z[j]);
  for (int64_t j = 3 * H; j < 4 * H; ++j) acts[j] = sigmoid_f(z[j]);
  if (!real) {  // a masked step: h and c unchanged, output 0
    for (int64_t j = 0; j < H; ++j) out[j] = 0.0f;
    return;
  }
  const float* __restrict gi = acts;
  const float* __restrict gf = acts + H;
  const float* __restrict gg = acts + 2 * H;
  const float* __restrict go = acts + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const float cn = gf[j] * c[j] + gi[j] * gg[j];
    c[j] = cn;
    const float hn = go[j] * tanh_f(cn);
    h[j] = hn;
    out[j] = hn;
  }
}

// One row of the backward step: dz [4H] from the gates, c_{t-1}, the output's gradient and the carried
// dh, dc; dh, dc become what passes to step t-1 apart from dz @ rk^T (which the caller adds). A masked
// step (not `real`) passes dh, dc through unchanged with dz = 0, whatever its output's gradient and gates
// hold (selected, not multiplied by the mask: 0 * NaN would be NaN).
void backward_row(const float* __restrict a, const float* __restrict cp,
                  const float* __restrict dout, float* __restrict dh, float* __restrict dc,
                  float* __restrict dz, bool real, int64_t H) {
  if (!real) {
    for (int64_t j = 0; j < 4 * H; ++j) dz[j] = 0.0f;
    return;
  }
  for (int64_t j = 0; j < H; ++j) {
    const float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
    const float cn = f * cp[j] + i * g;
    const float tc = tanh_f(cn);
    const float dhn = dh[j] + dout[j];
    const float dcn = dc[j] + dhn * o * (1.0f - tc * tc);
    dz[j] = dcn * g * i * (1.0f - i);
    dz[H + j] = dcn * cp[j] * f * (1.0f - f);
    dz[2 * H + j] = dcn * i * (1.0f - g * g);
    dz[3 * H + j] = dhn * tc * o * (1.0f - o);
    dh[j] = 0.0f;
    dc[j] = dcn * f;
  }
}

// A weight matrix [rows, cols] as [round_up(rows, row_multiple), round_up(cols, VL)], zero-padded to whole
// vectors (rk [H, 4H] -> [H, Gp], rk^T [4H, H] -> [Gp, Hp]): `w` itself when no padding is needed (no copy
// per call), else a padded copy kept in `store`.
const float* whole_vectors(const float* w, int64_t rows, int64_t cols, int64_t row_multiple,
                           Floats& store) {
  const int64_t prows = round_up(rows, row_multiple), pcols = round_up(cols, VL);
  if (prows == rows && pcols == cols) return w;
  store.assign(prows * pcols, 0.0f);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(&store[r * pcols], w + r * cols, cols * sizeof(float));
  return store.data();
}

// The row a token id names in a table of V rows (a negative id counts from the end, as numpy's), or -1
// for an id outside [-V, V).
inline int64_t table_row(int32_t id, int64_t V) {
  const int64_t i = id < 0 ? id + V : id;
  return i >= 0 && i < V ? i : -1;
}

// The forward recurrence on rows [r0, r1), as a stepper. Given zx (F = 0): z_t = zx[t] + bias + (h * rmask)
// @ w, w = rk [H, 4H] padded. Given xs (F > 0): z_t = bias + [x_t, h * rmask] @ w, w = [kernel; rk]
// [F + H, 4H] padded: the input projection is part of each step's matmul, so no [T, B, 4H] projection is
// made first. Given ids [T, B] as well as zx (then the projected table [V, 4H]): zx[t] is the table's rows
// at ids[t] (`table_row`), read in the step, so no [T, B, 4H] gather is made first either.
RowStepper forward_rows(const Dims d, const float* wp, const float* bias, const float* zx,
                        const int32_t* ids, int64_t V, const float* xs, float* acts,
                        const float* mask, const float* h0, const float* c0, const float* rmask,
                        float* outs, float* hT, float* cT, float* hc, bool reverse, int64_t r0,
                        int64_t r1) {
  const int64_t T = d.T, B = d.B, H = d.H, F = d.F, K = F + H, G = 4 * H, Gp = round_up(G, VL);
  const int64_t R = r1 - r0;
  struct State {
    Floats h, c, a, z;
  };
  auto st = std::make_shared<State>();
  st->h.assign(h0 + r0 * H, h0 + r1 * H);
  st->c.assign(c0 + r0 * H, c0 + r1 * H);
  st->a.resize(R * K);
  st->z.assign(R * Gp, 0.0f);
  const float* rm = rmask + r0 * H;
  RowStepper out;
  out.T = T;
  out.step_at = [=](int64_t s) {
    float *h = st->h.data(), *c = st->c.data(), *a = st->a.data(), *z = st->z.data();
    const int64_t t = reverse ? T - 1 - s : s;
    const int64_t tn = reverse ? t - 1 : t + 1;
    float* hc_t = hc + (t * B + r0) * 2 * H;
    if (s + 1 < T) {
      if (ids) {
        for (int64_t r = 0; r < R; ++r) {
          const int64_t i = table_row(ids[tn * B + r0 + r], V);
          if (i >= 0) prefetch(zx + i * G, G);
        }
      } else if (zx) {
        prefetch(zx + (tn * B + r0) * G, R * G);
      }
      if (F) prefetch(xs + (tn * B + r0) * F, R * F);
    }
    for (int64_t r = 0; r < R; ++r) {
      float* __restrict zr = z + r * Gp;
      if (ids) {
        const int64_t i = table_row(ids[t * B + r0 + r], V);
        if (i >= 0) {
          const float* __restrict xr = zx + i * G;
          for (int64_t j = 0; j < G; ++j) zr[j] = xr[j] + bias[j];
        } else {  // an id outside [-V, V): a NaN row, as jnp.take's default "fill" mode gives
          for (int64_t j = 0; j < G; ++j) zr[j] = std::numeric_limits<float>::quiet_NaN();
        }
      } else if (zx) {
        const float* __restrict xr = zx + (t * B + r0 + r) * G;
        for (int64_t j = 0; j < G; ++j) zr[j] = xr[j] + bias[j];
      } else {
        std::memcpy(zr, bias, G * sizeof(float));
      }
      float* __restrict ar = a + r * K;
      if (F) std::memcpy(ar, xs + (t * B + r0 + r) * F, F * sizeof(float));
      for (int64_t k = 0; k < H; ++k) ar[F + k] = h[r * H + k] * rm[r * H + k];
      std::memcpy(hc_t + r * 2 * H, h + r * H, H * sizeof(float));
      std::memcpy(hc_t + r * 2 * H + H, c + r * H, H * sizeof(float));
    }
    timed_gemm([&] { gemm_acc(a, K, wp, Gp, z, Gp, R, K, Gp); });
    const float* m_t = mask + t * B + r0;
    float* a_t = acts + (t * B + r0) * G;
    float* out_t = outs + (t * B + r0) * H;
    for (int64_t r = 0; r < R; ++r)
      forward_row(z + r * Gp, a_t + r * G, h + r * H, c + r * H, out_t + r * H, m_t[r] > 0.5f, H);
  };
  out.finish = [=] {
    std::memcpy(hT + r0 * H, st->h.data(), R * H * sizeof(float));
    std::memcpy(cT + r0 * H, st->c.data(), R * H * sizeof(float));
  };
  return out;
}

// One row block's share of the weight gradients: dw [F + H, Gp] = sum over its steps of
// [x_t, h_{t-1} * rmask]^T @ dz_t (only when `weights`), db [Gp] = sum of dz_t (summed over the blocks
// after the call).
struct WeightGrads {
  bool weights = true;  // false: the bias's gradient only
  Floats dw, db, at;    // at: the step's [x_t, h * rmask] transposed, [F + H, rows]
};

// The backward recurrence on rows [r0, r1), as a stepper; wTp = w^T [4H, F + H] padded. With F > 0 the
// first F columns of dz @ w^T are the inputs' gradient, written to dx [T, B, F]. With `wg`, each step also
// adds its weight gradients (see WeightGrads; xs [T, B, F] are the inputs when F > 0) while dz_t is in
// cache, so no [T, B, *] array is read again for them after the loop.
RowStepper backward_rows(const Dims d, const float* wTp, float* acts_dz, const float* hc,
                         const float* mask, const float* dout, const float* dhT, const float* dcT,
                         const float* rmask, float* dx, float* dh0, float* dc0, bool reverse,
                         bool has_dout, const float* xs, WeightGrads* wg, int64_t r0, int64_t r1) {
  const int64_t T = d.T, B = d.B, H = d.H, F = d.F, G = 4 * H, Gp = round_up(G, VL);
  const int64_t K = F + H, Kp = round_up(K, VL), R = r1 - r0;
  if (wg) {
    if (wg->weights) {
      wg->dw.assign(K * Gp, 0.0f);
      wg->at.resize(K * R);
    }
    wg->db.assign(Gp, 0.0f);
  }
  struct State {
    Floats dh, dc, dxh, dz, no_dout;  // no_dout: the outputs' gradient when it is zero
  };
  auto st = std::make_shared<State>();
  st->dh.assign(dhT + r0 * H, dhT + r1 * H);
  st->dc.assign(dcT + r0 * H, dcT + r1 * H);
  st->dxh.resize(R * Kp);
  st->dz.assign(R * Gp, 0.0f);
  st->no_dout.assign(H, 0.0f);
  const float* rm = rmask + r0 * H;
  RowStepper out;
  out.T = T;
  out.step_at = [=](int64_t s) {
    float *dh = st->dh.data(), *dc = st->dc.data(), *dxh = st->dxh.data(), *dz = st->dz.data();
    const int64_t t = reverse ? s : T - 1 - s;  // the forward scan order, backwards
    float* a_t = acts_dz + (t * B + r0) * G;     // the gates on entry, dz on exit
    const float* hc_t = hc + (t * B + r0) * 2 * H;
    const float* m_t = mask + t * B + r0;
    const float* do_t = has_dout ? dout + (t * B + r0) * H : nullptr;
    if (s + 1 < T) {
      const int64_t tn = reverse ? t + 1 : t - 1;
      prefetch(acts_dz + (tn * B + r0) * G, R * G);
      prefetch(hc + (tn * B + r0) * 2 * H, R * 2 * H);
      if (has_dout) prefetch(dout + (tn * B + r0) * H, R * H);
    }
    for (int64_t r = 0; r < R; ++r) {
      float* dzr = dz + r * Gp;
      backward_row(a_t + r * G, hc_t + r * 2 * H + H, has_dout ? do_t + r * H : st->no_dout.data(),
                   dh + r * H, dc + r * H, dzr, m_t[r] > 0.5f, H);
      std::memcpy(a_t + r * G, dzr, G * sizeof(float));
    }
    if (wg && wg->weights) {  // before dh changes below; hc_t holds h_{t-1} (the first H of each row's 2H)
      float* __restrict at = wg->at.data();
      for (int64_t r = 0; r < R; ++r) {
        if (F) {
          const float* __restrict xr = xs + (t * B + r0 + r) * F;
          for (int64_t k = 0; k < F; ++k) at[k * R + r] = xr[k];
        }
        const float* __restrict hr = hc_t + r * 2 * H;
        const float* __restrict rmr = rm + r * H;
        for (int64_t k = 0; k < H; ++k) at[(F + k) * R + r] = hr[k] * rmr[k];
      }
      timed_gemm([&] { gemm_acc(at, R, dz, Gp, wg->dw.data(), Gp, K, R, Gp); });
    }
    if (wg) {
      float* __restrict db = wg->db.data();
      for (int64_t r = 0; r < R; ++r) {
        const float* __restrict dzr = dz + r * Gp;
        for (int64_t j = 0; j < G; ++j) db[j] += dzr[j];
      }
    }
    std::fill(dxh, dxh + R * Kp, 0.0f);
    timed_gemm([&] { gemm_acc(dz, Gp, wTp, Kp, dxh, Kp, R, Gp, Kp); });
    for (int64_t r = 0; r < R; ++r) {
      const float* __restrict g = dxh + r * Kp;
      if (F) std::memcpy(dx + (t * B + r0 + r) * F, g, F * sizeof(float));
      float* __restrict dhrow = dh + r * H;
      const float* __restrict rmr = rm + r * H;
      for (int64_t k = 0; k < H; ++k) dhrow[k] += g[F + k] * rmr[k];
    }
  };
  out.finish = [=] {
    std::memcpy(dh0 + r0 * H, st->dh.data(), R * H * sizeof(float));
    std::memcpy(dc0 + r0 * H, st->dc.data(), R * H * sizeof(float));
  };
  return out;
}

// `parallel_rows` with helper tasks on XLA's intra-op thread pool (no thread is created per call), or on
// new threads where the call has no pool.
template <typename Make>
RowsTiming on_rows(ffi::ThreadPool& pool, int64_t B, int64_t threads, Make make) {
  if (pool.num_threads() > 0)
    return parallel_rows(B, threads, make, [&pool](auto task) { pool.Schedule(std::move(task)); });
  NewThreads spawn;
  return parallel_rows(B, threads, make, std::ref(spawn));
}

ffi::Error check(bool ok, const std::string& what) {
  return ok ? ffi::Error::Success() : ffi::Error::InvalidArgument("lstm_jax native LSTM: " + what);
}

// Whether buffer `a` has exactly the dimensions `want`.
template <typename Buf>
bool has_dims(const Buf& a, std::initializer_list<int64_t> want) {
  const auto dims = a.dimensions();
  if (dims.size() != want.size()) return false;
  size_t i = 0;
  for (const int64_t w : want)
    if (dims[i++] != w) return false;
  return true;
}

ffi::Error run_forward(const Dims d, const float* w, const float* bias, const float* zx,
                       const int32_t* ids, int64_t V, const float* xs, float* acts,
                       const float* mask, const float* h0,
                       const float* c0, const float* rmask, float* outs, float* hT, float* cT,
                       float* hc, ffi::ThreadPool& pool, int32_t reverse, int32_t threads) {
  const int64_t t0 = stats_on() ? now_ns() : 0;
  Floats store;
  const float* w_used = whole_vectors(w, d.F + d.H, 4 * d.H, 1, store);
  const RowsTiming timing = on_rows(pool, d.B, threads, [&](int64_t r0, int64_t r1) {
    return forward_rows(d, w_used, bias, zx, ids, V, xs, acts, mask, h0, c0, rmask, outs, hT, cT,
                        hc, reverse != 0, r0, r1);
  });
  if (t0) record_call(d.F ? "forward_x" : ids ? "forward_ids" : "forward", d, t0, timing);
  return ffi::Error::Success();
}

// The backward call. With db the bias's gradient too, db [4H] = sum of dz_t, and with dw (which needs db)
// the weights': dw [F + H, 4H] = sum over t of [x_t, h_{t-1} * rmask]^T @ dz_t (xs [T, B, F] the inputs
// when F > 0); each row block's share summed in the steps and the blocks' shares summed in block order
// after them.
ffi::Error run_backward(const Dims d, const float* wT, const float* acts, float* dz, const float* hc,
                        const float* mask, const float* dout, const float* dhT, const float* dcT,
                        const float* rmask, float* dx, float* dh0, float* dc0, const float* xs,
                        float* dw, float* db, ffi::ThreadPool& pool, int32_t reverse,
                        int32_t threads, int32_t has_dout) {
  const int64_t t0 = stats_on() ? now_ns() : 0;
  if (dz != acts) std::memcpy(dz, acts, d.T * d.B * 4 * d.H * sizeof(float));
  Floats store;
  const float* wT_used = whole_vectors(wT, 4 * d.H, d.F + d.H, VL, store);
  std::vector<std::unique_ptr<WeightGrads>> shares;  // one per row block, made by the calling thread
  const RowsTiming timing = on_rows(pool, d.B, threads, [&](int64_t r0, int64_t r1) {
    WeightGrads* wg = nullptr;
    if (db) {
      shares.push_back(std::make_unique<WeightGrads>());
      wg = shares.back().get();
      wg->weights = dw != nullptr;
    }
    return backward_rows(d, wT_used, dz, hc, mask, dout, dhT, dcT, rmask, dx, dh0, dc0,
                         reverse != 0, has_dout != 0, xs, wg, r0, r1);
  });
  if (db) {
    const int64_t K = d.F + d.H, G = 4 * d.H, Gp = round_up(G, VL);
    if (dw) std::fill(dw, dw + K * G, 0.0f);
    std::fill(db, db + G, 0.0f);
    for (const auto& share : shares) {
      for (int64_t k = 0; dw && k < K; ++k) {
        const float* __restrict src = share->dw.data() + k * Gp;
        float* __restrict dst = dw + k * G;
        for (int64_t j = 0; j < G; ++j) dst[j] += src[j];
      }
      for (int64_t j = 0; j < G; ++j) db[j] += share->db[j];
    }
  }
  if (t0)
    record_call((std::string(d.F ? "backward_x" : "backward") + (dw ? "+wg" : db ? "+db" : "")).c_str(),
                d, t0, timing);
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------------
// Generation (LstmGenerate): lstm_jax.generate's stateful loop for a stack of LSTM layers and a linear output
// layer, every generated token in one call. Per token and stream the work is one row times every weight
// (4.3 MB for the char model's 2 x LSTM(300)), more than a core's L2, so one thread is bound by how fast it
// streams weights from L3; the call splits each layer's units (and the output layer's columns) between the
// threads instead, and each thread streams only its share. The phases of one token: layer 0, ..., layer L-1,
// the output layer, then choosing the next token (greedy argmax, or argmax of (logits - max) / temperature
// (top-k masked) + Gumbel noise drawn in JAX, which is how jax.random.categorical samples).
// ---------------------------------------------------------------------------------------------------------

constexpr int64_t GU = 2 * VL;    // units per column group
constexpr int64_t GW = 4 * GU;    // a group's columns: the 4 gates of its GU units, 8 vectors
constexpr int GV = GW / VL;       // = 8 accumulators for one row

// Group g's GW columns of one gate-ordered row src [4H] into d [GW].
inline void group_columns(const float* src, int64_t H, int64_t g, float* d) {
  const int64_t n = std::min(GU, H - g * GU);
  for (int64_t gate = 0; gate < 4; ++gate) {
    std::memcpy(d + gate * GU, src + gate * H + g * GU, n * sizeof(float));
    std::fill(d + gate * GU + n, d + (gate + 1) * GU, 0.0f);
  }
}

// Packs rows of gate-ordered columns (`row(r)` -> [4H]) into the panels of groups [g0, g1).
template <typename Row>
void pack_groups_range(int64_t rows, int64_t H, int64_t g0, int64_t g1, Row row, float* dst) {
  for (int64_t g = g0; g < g1; ++g)
    for (int64_t r = 0; r < rows; ++r) group_columns(row(r), H, g, dst + (g * rows + r) * GW);
}

// One layer's weights in column groups: w [groups][K][GW] (K = F + H rows: kernel, then rk), group g's
// column q holding gate q / GU of unit g * GU + q % GU (zero past H), so a group's slice of the product is
// one contiguous [K, GW] panel. The panels are packed by the slices that use them, in their first step
// (in parallel, and not zeroed first: packing 4.3 MB in the calling thread took 2 ms of a 200-token
// call's 15).
struct GenLayer {
  int64_t F = 0, H = 0, groups = 0;
  const float* kernel = nullptr;  // [F, 4H] (layers after the first)
  const float* rk = nullptr;      // [H, 4H]
  UninitFloats w;                 // [groups][F + H][GW]
  Floats bias;                    // [groups][GW] (layer 0: zero, its bias is in the table)
  Floats h[2], c;                 // [B, H]; h alternates with the step's parity

  void pack(int64_t g) {
    const int64_t G = 4 * H;
    pack_groups_range(F + H, H, g, g + 1,
                      [&](int64_t r) { return r < F ? kernel + r * G : rk + (r - F) * G; }, w.get());
  }
};

// c[GW] += a[K] @ W[K, GW]: one row, 8 accumulators. (Written out: `micro<1, 8>` made the compiler take
// two minutes over this file instead of ten seconds.)
inline void row_product(const float* __restrict a, const float* __restrict W, float* __restrict c,
                        int64_t K) {
  static_assert(GV == 8, "one accumulator per vector of a group");
  vf a0 = loadu(c), a1 = loadu(c + VL), a2 = loadu(c + 2 * VL), a3 = loadu(c + 3 * VL);
  vf a4 = loadu(c + 4 * VL), a5 = loadu(c + 5 * VL), a6 = loadu(c + 6 * VL), a7 = loadu(c + 7 * VL);
  for (int64_t k = 0; k < K; ++k) {
    const float x = a[k];
    const float* w = W + k * GW;
    a0 += x * loadu(w);
    a1 += x * loadu(w + VL);
    a2 += x * loadu(w + 2 * VL);
    a3 += x * loadu(w + 3 * VL);
    a4 += x * loadu(w + 4 * VL);
    a5 += x * loadu(w + 5 * VL);
    a6 += x * loadu(w + 6 * VL);
    a7 += x * loadu(w + 7 * VL);
  }
  storeu(c, a0), storeu(c + VL, a1), storeu(c + 2 * VL, a2), storeu(c + 3 * VL, a3);
  storeu(c + 4 * VL, a4), storeu(c + 5 * VL, a5), storeu(c + 6 * VL, a6), storeu(c + 7 * VL, a7);
}

// C[M, GW] += A[M, K] @ W[K, GW] (W one group's panel): 8 accumulators per row for few rows, the tiled
// matmul for more.
inline void group_product(const float* A, int64_t lda, const float* W, float* C, int64_t M, int64_t K) {
  if (M >= TILE_ROWS) return gemm_acc(A, lda, W, GW, C, GW, M, K, GW);
  for (int64_t r = 0; r < M; ++r) row_product(A + r * lda, W, C + r * GW, K);
}

struct GenJob {
  int64_t B = 0, V = 0, N = 0, L = 0, top_k = 0;
  float temperature = 0.0f;
  const float* table = nullptr;  // [V, 4 H_0]: layer 0's input projection plus bias, per token
  const float* noise = nullptr;  // [N, B, V] (sampling only)
  int32_t* out = nullptr;        // [B, N]
  std::vector<GenLayer> layers;
  int64_t head_groups = 0;
  Floats head_w, head_b, logits;             // head_w [groups][F][GW], logits [B, groups * GW]
  std::vector<int32_t> tok;                  // [B]: the token each stream feeds next
  std::vector<int64_t> slices, phase_start;  // per phase (L layers, head, choose); offsets in a step
  int64_t per_step = 0, total = 0;
  std::unique_ptr<std::atomic<uint8_t>[]> claimed;  // [total]: ticket taken
  std::unique_ptr<std::atomic<bool>[]> active;      // [threads]: helper k is taking its tickets
  std::atomic<int64_t> done{0}, helper_ids{1};
  std::atomic<int64_t> solo_until_ns{0}, solo_count{0};
  CpuSpread cpus;
  static constexpr int64_t kSoloNs = 5000000;

  void set_phases(int64_t threads) {
    for (const GenLayer& l : layers) slices.push_back(std::min(threads, l.groups));
    slices.push_back(std::min(threads, head_groups));
    slices.push_back(std::min(threads, B));
    phase_start.push_back(0);
    for (int64_t s : slices) phase_start.push_back(phase_start.back() + s);
    per_step = phase_start.back();
    total = N > 1 ? (N - 1) * per_step : 0;
    claimed.reset(new std::atomic<uint8_t>[std::max<int64_t>(total, 1)]());
    active.reset(new std::atomic<bool>[threads]());
  }

  bool solo() const { return now_ns() < solo_until_ns.load(std::memory_order_relaxed); }

  bool claim(int64_t ticket) {
    uint8_t expect = 0;
    return claimed[ticket].load(std::memory_order_relaxed) == 0 &&
           claimed[ticket].compare_exchange_strong(expect, 1, std::memory_order_acquire);
  }

  void run_ticket(int64_t t, int64_t p, int64_t slice, int64_t& last_ns) {
    const int64_t t0 = now_ns();
    run(t, p, slice);
    last_ns = now_ns() - t0;
    done.fetch_add(1, std::memory_order_acq_rel);
  }

  // Each phase of each step (an instance) is `slices[p]` tickets, one per slice; an instance starts once
  // every earlier ticket is done. Slice k of every instance is thread k's own (the caller is 0, helpers
  // number themselves as they start), so each core keeps working on the same columns of the weights and
  // finds them in its cache the next step; the layers' column groups are also visited in alternating
  // order (see layer_slice). The caller takes a helper's ticket when that helper is not taking tickets (it
  // has not started yet, has finished, or steps aside), so a helper that starts late, or never, only
  // changes who runs a slice, not the result.
  void work(int64_t id) {
    FlushDenormals flush;
    const bool is_caller = id == 0;
    int64_t last_ns = 0;  // how long this thread's last slice took
    const int64_t P = static_cast<int64_t>(slices.size());
    const int64_t instances = total / std::max<int64_t>(per_step, 1) * P;
    for (int64_t q = 0; q < instances; ++q) {
      const int64_t t = q / P, p = q % P, S = slices[p];
      const int64_t base = t * per_step + phase_start[p];
      if (is_caller) {
        wait_done(base, last_ns);
        if (claim(base)) run_ticket(t, p, 0, last_ns);
        take_absent(t, p, base, S, last_ns);
        continue;
      }
      if (solo()) {  // a thread lost its core: the caller runs alone for a while
        active[id].store(false, std::memory_order_release);
        while (solo()) {
          if (done.load(std::memory_order_acquire) >= total) return;
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
      }
      active[id].store(true, std::memory_order_release);
      if (id >= S || done.load(std::memory_order_acquire) >= base + S) continue;
      wait_done(base, last_ns);
      if (claim(base + id)) run_ticket(t, p, id, last_ns);
    }
    if (!is_caller) active[id].store(false, std::memory_order_release);
  }

  // The caller, after its own slice: runs the instance's tickets whose helper is not taking tickets, and
  // waits until the others are taken (by their helpers, or by itself once `solo()`).
  void take_absent(int64_t t, int64_t p, int64_t base, int64_t S, int64_t& last_ns) {
    const int64_t t0 = now_ns();
    for (int spins = 1;; ++spins) {
      bool open = false;
      for (int64_t k = 1; k < S; ++k) {
        if (claimed[base + k].load(std::memory_order_acquire)) continue;
        if (!active[k].load(std::memory_order_acquire) || solo()) {
          if (claim(base + k)) run_ticket(t, p, k, last_ns);
        } else {
          open = true;
        }
      }
      if (!open) return;
      if (spins < 2048) {
        spin_pause();
        continue;
      }
      std::this_thread::yield();
      if (spins % 64 == 0) give_up_waiting(t0, base, last_ns);
    }
  }

  // Waits until `need` tickets are done: spinning (a slice takes microseconds), then yielding the core.
  void wait_done(int64_t need, int64_t last_ns = 0) {
    if (done.load(std::memory_order_acquire) >= need) return;
    const int64_t t0 = now_ns();
    for (int spins = 1; done.load(std::memory_order_acquire) < need; ++spins) {
      if (spins < 2048) {
        spin_pause();
        continue;
      }
      std::this_thread::yield();
      if (spins % 64 == 0) give_up_waiting(t0, need, last_ns);
    }
  }

  // A wait far longer than a slice means a thread lost its core (more threads than free cores: another
  // process, or more threads than cores). Then the helpers stop taking tickets for 5 ms, and for the rest of
  // the call the third time, so the calling thread runs alone at one core's speed instead of stalling on
  // the scheduler every phase (3 threads on 2 cores took 90x longer than 1 thread without this); after a
  // brief hiccup on an idle machine, the helpers come back. Not in the first step, which packs the weights.
  void give_up_waiting(int64_t t0, int64_t need, int64_t last_ns) {
    if (need <= per_step) return;
    const int64_t now = now_ns();
    if (now - t0 > std::max<int64_t>(200000, 8 * last_ns) &&
        now > solo_until_ns.load(std::memory_order_relaxed)) {
      const bool again = solo_count.fetch_add(1, std::memory_order_relaxed) >= 2;
      solo_until_ns.store(again ? std::numeric_limits<int64_t>::max() : now + kSoloNs,
                          std::memory_order_relaxed);
    }
  }

  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  static void spin_pause() {
#if defined(__SSE2__)
    _mm_pause();
#endif
  }

  static std::pair<int64_t, int64_t> share(int64_t n, int64_t parts, int64_t k) {
    return {n * k / parts, n * (k + 1) / parts};
  }

  void run(int64_t t, int64_t p, int64_t slice) {
    const int cur = t & 1;
    if (p < L) return layer_slice(layers[p], t, p, share(layers[p].groups, slices[p], slice));
    if (p == L) return head_slice(cur, share(head_groups, slices[p], slice));
    const auto rows = share(B, slices[p], slice);
    for (int64_t b = rows.first; b < rows.second; ++b) {
      tok[b] = choose(logits.data() + b * head_groups * GW, noise ? noise + ((t + 1) * B + b) * V : nullptr);
      out[b * N + t + 1] = tok[b];
    }
  }

  void layer_slice(GenLayer& l, int64_t t, int64_t p, std::pair<int64_t, int64_t> groups) {
    const int cur = t & 1, prev = cur ^ 1;
    const int64_t H = l.H, K = l.F + l.H, G = 4 * H;
    // Made every step: glibc's malloc, not `Floats` (as a `Floats` here one-stream generation of shape A
    // ran at 7,900 characters a second instead of 16,900: glibc's aligned allocation is slow).
    std::vector<float> z(B * GW);
    // The groups in alternating order, so that the groups a core read last in one step are the first it
    // reads in the next, while they are still in its cache (each group's arithmetic is the same).
    for (int64_t i = groups.first; i < groups.second; ++i) {
      const int64_t g = t % 2 ? groups.first + groups.second - 1 - i : i;
      for (int64_t b = 0; b < B; ++b) {
        float* zb = z.data() + b * GW;
        if (p == 0) {
          // A stream whose logits had no token (-1) goes on from token 0; its -1 is the error.
          group_columns(table + static_cast<int64_t>(std::max(tok[b], 0)) * G, H, g, zb);
        } else {
          std::memcpy(zb, l.bias.data() + g * GW, GW * sizeof(float));
        }
      }
      if (t == 0) l.pack(g);
      const float* w = l.w.get() + g * K * GW;
      if (l.F) group_product(layers[p - 1].h[cur].data(), l.F, w, z.data(), B, l.F);
      group_product(l.h[prev].data(), H, w + l.F * GW, z.data(), B, H);
      const int64_t n = std::min(GU, H - g * GU);
      for (int64_t b = 0; b < B; ++b) {
        const float* __restrict zb = z.data() + b * GW;
        float* __restrict c = l.c.data() + b * H + g * GU;
        float* __restrict h = l.h[cur].data() + b * H + g * GU;
        for (int64_t q = 0; q < n; ++q) {
          const float i = sigmoid_f(zb[q]), f = sigmoid_f(zb[GU + q]);
          const float gg = tanh_f(zb[2 * GU + q]), o = sigmoid_f(zb[3 * GU + q]);
          const float cn = f * c[q] + i * gg;
          c[q] = cn;
          h[q] = o * tanh_f(cn);
        }
      }
    }
  }

  void head_slice(int cur, std::pair<int64_t, int64_t> groups) {
    const GenLayer& last = layers.back();
    const int64_t F = last.H, ld = head_groups * GW;
    std::vector<float> z(B * GW);  // every step: glibc's malloc, as in layer_slice
    for (int64_t g = groups.first; g < groups.second; ++g) {
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(z.data() + b * GW, head_b.data() + g * GW, GW * sizeof(float));
      group_product(last.h[cur].data(), F, head_w.data() + g * F * GW, z.data(), B, F);
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(logits.data() + b * ld + g * GW, z.data() + b * GW, GW * sizeof(float));
    }
  }

  // The next token from one stream's logits [V]: jnp.argmax (the first maximum) of the logits (greedy), or
  // of (logits - max) / temperature (the maximum exactly 0, so a tiny temperature gives -inf at worst, not
  // inf - inf = NaN: lstm_jax.generate.scale_logits), those of logits below the top_k-th largest logit set
  // to -inf (ranked before dividing, as lstm_jax.generate.sample_logits: a huge temperature makes the
  // scaled logits subnormal, which XLA flushes to 0), plus the Gumbel noise. Logits holding a NaN or all
  // -inf have no token: -1, as lstm_jax.generate.sample_logits gives under jit (INVALID_TOKEN).
  int32_t choose(const float* lg, const float* gumbel) const {
    float m = lg[0];
    for (int64_t j = 0; j < V; ++j)
      if (lg[j] > m || lg[j] != lg[j]) m = lg[j];  // NaN propagates, as jnp.max
    if (m != m || m == -std::numeric_limits<float>::infinity()) return -1;
    if (temperature <= 0.0f || gumbel == nullptr) return static_cast<int32_t>(argmax(lg, V));
    std::vector<float> s(lg, lg + V);
    for (float& x : s) {
      const float d = x - m;
      x = d == 0.0f ? 0.0f : d / temperature;
    }
    if (top_k > 0 && top_k < V) {
      std::vector<float> sorted(lg, lg + V);
      std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<float>());
      const float kth = sorted[top_k - 1];
      for (int64_t j = 0; j < V; ++j)
        if (lg[j] < kth) s[j] = -std::numeric_limits<float>::infinity();
    }
    for (int64_t j = 0; j < V; ++j) s[j] += gumbel[j];
    return static_cast<int32_t>(argmax(s.data(), V));
  }

  static int64_t argmax(const float* x, int64_t n) {
    int64_t best = 0;
    for (int64_t j = 1; j < n; ++j)
      if (x[j] > x[best] || (x[j] != x[j] && x[best] == x[best])) best = j;  // NaN wins, as jnp.argmax
    return best;
  }
};

using In = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

// The inputs a training call reads by the sizes its main inputs give (T, B, H): it reads exactly that
// many floats from each, so another shape would be read past its end or misread (a [B, T] mask as [T, B]).
// The forward calls': bias [4H], mask [T, B], h0, c0 and rmask [B, H].
ffi::Error check_forward_inputs(const Dims& d, const In& bias, const In& mask, const In& h0,
                                const In& c0, const In& rmask) {
  const bool ok = has_dims(bias, {4 * d.H}) && has_dims(mask, {d.T, d.B}) &&
                  has_dims(h0, {d.B, d.H}) && has_dims(c0, {d.B, d.H}) &&
                  has_dims(rmask, {d.B, d.H});
  return check(ok, "bias [4H], mask [T, B], h0, c0 and rmask [B, H] shapes");
}

// The backward calls': hc [T, B, 2H], mask [T, B], d outs [T, B, H] (when has_dout), d h_T, d c_T and
// rmask [B, H].
ffi::Error check_backward_inputs(const Dims& d, const In& hc, const In& mask, const In& dout,
                                 const In& dhT, const In& dcT, const In& rmask, int32_t has_dout) {
  const bool ok = has_dims(hc, {d.T, d.B, 2 * d.H}) && has_dims(mask, {d.T, d.B}) &&
                  (!has_dout || has_dims(dout, {d.T, d.B, d.H})) && has_dims(dhT, {d.B, d.H}) &&
                  has_dims(dcT, {d.B, d.H}) && has_dims(rmask, {d.B, d.H});
  return check(ok, "hc [T, B, 2H], mask [T, B], d outs [T, B, H], d h_T, d c_T and rmask [B, H] shapes");
}

ffi::Error LstmForwardImpl(In rk, In bias, In zx, In mask, In h0, In c0, In rmask, Out acts, Out outs,
                           Out hT, Out cT, Out hc, ffi::ThreadPool pool, int32_t reverse,
                           int32_t threads) {
  auto zd = zx.dimensions();
  if (zd.size() != 3 || rk.dimensions().size() != 2) return check(false, "bad ranks");
  const Dims d{zd[0], zd[1], rk.dimensions()[0]};
  if (auto e = check(zd[2] == 4 * d.H && rk.dimensions()[1] == 4 * d.H, "zx/rk shapes"); !e.success())
    return e;
  if (auto e = check_forward_inputs(d, bias, mask, h0, c0, rmask); !e.success()) return e;
  return run_forward(d, rk.typed_data(), bias.typed_data(), zx.typed_data(), nullptr, 0, nullptr,
                     acts->typed_data(), mask.typed_data(), h0.typed_data(), c0.typed_data(),
                     rmask.typed_data(), outs->typed_data(), hT->typed_data(), cT->typed_data(),
                     hc->typed_data(), pool, reverse, threads);
}

ffi::Error LstmForwardXImpl(In w, In bias, In xs, In mask, In h0, In c0, In rmask, Out acts,
                            Out outs, Out hT, Out cT, Out hc, ffi::ThreadPool pool,
                            int32_t reverse, int32_t threads) {
  auto xd = xs.dimensions();
  if (xd.size() != 3 || w.dimensions().size() != 2) return check(false, "bad ranks");
  const int64_t H = w.dimensions()[1] / 4;
  const Dims d{xd[0], xd[1], H, xd[2]};
  if (auto e = check(w.dimensions()[1] == 4 * H && w.dimensions()[0] == d.F + H && d.F > 0,
                     "xs/w shapes");
      !e.success())
    return e;
  if (auto e = check_forward_inputs(d, bias, mask, h0, c0, rmask); !e.success()) return e;
  return run_forward(d, w.typed_data(), bias.typed_data(), nullptr, nullptr, 0, xs.typed_data(),
                     acts->typed_data(), mask.typed_data(), h0.typed_data(), c0.typed_data(),
                     rmask.typed_data(), outs->typed_data(), hT->typed_data(), cT->typed_data(),
                     hc->typed_data(), pool, reverse, threads);
}

// The forward call from token ids: each step's pre-activations are rows of the projected embedding
// table [V, 4H] (the lookup folded into the input projection), read by id, with no [T, B, 4H] gather first.
ffi::Error LstmForwardIdsImpl(In rk, In bias, In table, ffi::Buffer<ffi::S32> ids, In mask, In h0,
                              In c0, In rmask, Out acts, Out outs, Out hT, Out cT, Out hc,
                              ffi::ThreadPool pool, int32_t reverse, int32_t threads) {
  auto idd = ids.dimensions();
  auto td = table.dimensions();
  if (idd.size() != 2 || td.size() != 2 || rk.dimensions().size() != 2)
    return check(false, "bad ranks");
  const Dims d{idd[0], idd[1], rk.dimensions()[0]};
  if (auto e = check(td[1] == 4 * d.H && rk.dimensions()[1] == 4 * d.H, "table/rk shapes");
      !e.success())
    return e;
  if (auto e = check_forward_inputs(d, bias, mask, h0, c0, rmask); !e.success()) return e;
  return run_forward(d, rk.typed_data(), bias.typed_data(), table.typed_data(), ids.typed_data(),
                     td[0], nullptr, acts->typed_data(), mask.typed_data(), h0.typed_data(),
                     c0.typed_data(), rmask.typed_data(), outs->typed_data(), hT->typed_data(),
                     cT->typed_data(), hc->typed_data(), pool, reverse, threads);
}

// The transpose of reading rows by id: out [V, G] = zeros, then out[ids[n]] += dz[n] for n = 0, 1, ...
// (a negative id counts from the end, one outside [-V, V) is dropped), the table gradient of a folded
// embedding. Threads split the G columns (each column summed in the same order whatever the split); the
// steps of a column block are its zeroing and then chunks of rows, so a helper that starts late takes
// over from where the caller is (RowBlocks).
RowStepper scatter_columns(const int32_t* ids, const float* dz, float* out, int64_t N, int64_t V,
                           int64_t G, int64_t c0, int64_t c1) {
  constexpr int64_t kChunk = 2048;
  RowStepper st;
  st.T = 1 + (N + kChunk - 1) / kChunk;
  st.step_at = [=](int64_t s) {
    const int64_t w = c1 - c0;
    if (s == 0) {
      for (int64_t v = 0; v < V; ++v) std::memset(out + v * G + c0, 0, w * sizeof(float));
      return;
    }
    const int64_t n1 = std::min(N, s * kChunk);
    for (int64_t n = (s - 1) * kChunk; n < n1; ++n) {
      const int64_t i = table_row(ids[n], V);
      if (i < 0) continue;
      float* __restrict o = out + i * G + c0;
      const float* __restrict d = dz + n * G + c0;
      for (int64_t j = 0; j < w; ++j) o[j] += d[j];
    }
  };
  st.finish = [] {};
  return st;
}

ffi::Error ScatterRowsImpl(ffi::Buffer<ffi::S32> ids, In dz, Out out, ffi::ThreadPool pool,
                           int32_t threads) {
  auto od = out->dimensions();
  auto dd = dz.dimensions();
  if (od.size() != 2 || dd.size() != 2) return check(false, "bad ranks");
  const int64_t N = dd[0], V = od[0], G = od[1];
  if (auto e = check(dd[1] == G && static_cast<int64_t>(ids.element_count()) == N,
                     "ids/dz/out shapes");
      !e.success())
    return e;
  const int32_t* id = ids.typed_data();
  const float* d = dz.typed_data();
  float* o = out->typed_data();
  on_rows(pool, G, threads,
          [&](int64_t c0, int64_t c1) { return scatter_columns(id, d, o, N, V, G, c0, c1); });
  return ffi::Error::Success();
}

// The backward calls' attribute weight_grads: which of the weight gradients the call sums; dw [F + H, 4H]
// and db [4H] are unused (any size) when not summed.
constexpr int32_t kNoGrads = 0, kWeightAndBiasGrads = 1, kBiasGrad = 2;

ffi::Error check_weight_grads(const Dims& d, int32_t weight_grads, Out& dw, Out& db) {
  if (weight_grads != kNoGrads && weight_grads != kWeightAndBiasGrads && weight_grads != kBiasGrad)
    return check(false, "weight_grads must be 0, 1 or 2");
  if (weight_grads == kNoGrads) return ffi::Error::Success();
  auto wd = dw->dimensions();
  auto bd = db->dimensions();
  const bool dw_ok = weight_grads == kBiasGrad ||
                     (wd.size() == 2 && wd[0] == d.F + d.H && wd[1] == 4 * d.H);
  return check(dw_ok && bd.size() == 1 && bd[0] == 4 * d.H, "dw/db shapes");
}

ffi::Error LstmBackwardImpl(In rkT, In acts, In hc, In mask, In dout, In dhT, In dcT, In rmask,
                            Out dz, Out dh0, Out dc0, Out dw, Out db, ffi::ThreadPool pool,
                            int32_t reverse, int32_t threads, int32_t has_dout,
                            int32_t weight_grads) {
  auto ad = acts.dimensions();
  if (ad.size() != 3 || rkT.dimensions().size() != 2) return check(false, "bad ranks");
  const Dims d{ad[0], ad[1], rkT.dimensions()[1]};
  if (auto e = check(ad[2] == 4 * d.H && rkT.dimensions()[0] == 4 * d.H, "acts/rkT shapes");
      !e.success())
    return e;
  if (auto e = check_backward_inputs(d, hc, mask, dout, dhT, dcT, rmask, has_dout); !e.success())
    return e;
  if (auto e = check_weight_grads(d, weight_grads, dw, db); !e.success()) return e;
  return run_backward(d, rkT.typed_data(), acts.typed_data(), dz->typed_data(), hc.typed_data(),
                      mask.typed_data(), dout.typed_data(), dhT.typed_data(), dcT.typed_data(),
                      rmask.typed_data(), nullptr, dh0->typed_data(), dc0->typed_data(), nullptr,
                      weight_grads == kWeightAndBiasGrads ? dw->typed_data() : nullptr,
                      weight_grads != kNoGrads ? db->typed_data() : nullptr, pool, reverse, threads,
                      has_dout);
}

ffi::Error LstmBackwardXImpl(In wT, In acts, In hc, In mask, In dout, In dhT, In dcT, In rmask,
                             In xs, Out dz, Out dx, Out dh0, Out dc0, Out dw, Out db,
                             ffi::ThreadPool pool, int32_t reverse, int32_t threads,
                             int32_t has_dout, int32_t weight_grads) {
  auto ad = acts.dimensions();
  if (ad.size() != 3 || wT.dimensions().size() != 2) return check(false, "bad ranks");
  const int64_t H = ad[2] / 4;
  const Dims d{ad[0], ad[1], H, wT.dimensions()[1] - H};
  if (auto e = check(ad[2] == 4 * H && wT.dimensions()[0] == 4 * H && d.F > 0 &&
                         dx->dimensions().size() == 3 && dx->dimensions()[2] == d.F,
                     "acts/wT/dx shapes");
      !e.success())
    return e;
  if (auto e = check_backward_inputs(d, hc, mask, dout, dhT, dcT, rmask, has_dout); !e.success())
    return e;
  if (auto e = check(weight_grads != kWeightAndBiasGrads ||
                         (xs.dimensions().size() == 3 && xs.dimensions()[0] == d.T &&
                                       xs.dimensions()[1] == d.B && xs.dimensions()[2] == d.F),
                     "xs shape");
      !e.success())
    return e;
  if (auto e = check_weight_grads(d, weight_grads, dw, db); !e.success()) return e;
  return run_backward(d, wT.typed_data(), acts.typed_data(), dz->typed_data(), hc.typed_data(),
                      mask.typed_data(), dout.typed_data(), dhT.typed_data(), dcT.typed_data(),
                      rmask.typed_data(), dx->typed_data(), dh0->typed_data(), dc0->typed_data(),
                      xs.typed_data(), weight_grads == kWeightAndBiasGrads ? dw->typed_data() : nullptr,
                      weight_grads != kNoGrads ? db->typed_data() : nullptr, pool, reverse, threads,
                      has_dout);
}

// Generation: (first [B] int32, table [V, 4 H_0], noise [N, B, V] (or anything when greedy), head kernel
// [H_{L-1}, V], head bias [V], then per layer: layer 0 (rk, h0, c0), layer l > 0 (kernel, rk, bias, h0, c0))
// -> tokens [B, N] int32, the first column `first`.
ffi::Error LstmGenerateImpl(ffi::Buffer<ffi::S32> first, In table, In noise, In head_w, In head_b,
                            ffi::RemainingArgs rest, ffi::ResultBuffer<ffi::S32> out,
                            ffi::ThreadPool pool, int32_t threads, int32_t top_k, float temperature) {
  auto job = std::make_shared<GenJob>();
  GenJob& j = *job;
  j.B = static_cast<int64_t>(first.element_count());
  j.V = static_cast<int64_t>(head_b.element_count());
  const auto od = out->dimensions();
  if (auto e = check(od.size() == 2 && od[0] == j.B, "tokens shape"); !e.success()) return e;
  j.N = od[1];
  const int64_t n_args = static_cast<int64_t>(rest.size());
  if (auto e = check(n_args >= 3 && (n_args - 3) % 5 == 0, "layer arguments"); !e.success()) return e;
  j.L = (n_args - 3) / 5 + 1;
  auto arg = [&](int64_t i) { return rest.get<In>(static_cast<size_t>(i)); };
  int64_t i = 0, F = 0;
  for (int64_t l = 0; l < j.L; ++l) {
    std::vector<In> b;
    for (int64_t k = 0; k < (l == 0 ? 3 : 5); ++k) {
      auto a = arg(i++);
      if (a.has_error()) return a.error();
      b.push_back(*a);
    }
    const In& rk = l == 0 ? b[0] : b[1];
    GenLayer layer;
    layer.H = rk.dimensions()[0];
    layer.F = F;
    const int64_t H = layer.H, G = 4 * H, K = F + H;
    bool ok = rk.dimensions().size() == 2 && rk.dimensions()[1] == G &&
              (l > 0 || (table.dimensions().size() == 2 && table.dimensions()[0] == j.V &&
                         table.dimensions()[1] == G)) &&
              (l == 0 || (b[0].dimensions().size() == 2 && b[0].dimensions()[0] == F &&
                          b[0].dimensions()[1] == G &&
                          b[2].element_count() == static_cast<size_t>(G)));
    const In& h0 = l == 0 ? b[1] : b[3];
    const In& c0 = l == 0 ? b[2] : b[4];
    ok = ok && has_dims(h0, {j.B, H}) && has_dims(c0, {j.B, H});  // [H, B] would be misread
    if (auto e = check(ok, "layer " + std::to_string(l) + " shapes"); !e.success()) return e;
    layer.groups = (H + GU - 1) / GU;
    layer.w = uninit_floats(layer.groups * K * GW);
    layer.kernel = l == 0 ? nullptr : b[0].typed_data();
    layer.rk = rk.typed_data();
    layer.bias.assign(layer.groups * GW, 0.0f);
    if (l > 0)
      pack_groups_range(1, H, 0, layer.groups, [&](int64_t) { return b[2].typed_data(); },
                        layer.bias.data());
    layer.h[0].assign(j.B * H, 0.0f);
    layer.h[1].assign(h0.typed_data(), h0.typed_data() + j.B * H);  // step 0 reads h[1]
    layer.c.assign(c0.typed_data(), c0.typed_data() + j.B * H);
    j.layers.push_back(std::move(layer));
    F = H;
  }
  const auto hd = head_w.dimensions();
  if (auto e = check(hd.size() == 2 && hd[0] == F && hd[1] == j.V, "head shapes"); !e.success())
    return e;
  j.temperature = temperature;
  j.top_k = top_k;
  if (temperature > 0.0f) {
    if (auto e = check(noise.element_count() == static_cast<size_t>(j.N * j.B * j.V), "noise shape");
        !e.success())
      return e;
    j.noise = noise.typed_data();
  }
  j.head_groups = (j.V + GW - 1) / GW;
  j.head_w.assign(j.head_groups * F * GW, 0.0f);
  j.head_b.assign(j.head_groups * GW, 0.0f);
  for (int64_t g = 0; g < j.head_groups; ++g) {
    const int64_t n = std::min(GW, j.V - g * GW);
    for (int64_t r = 0; r < F; ++r)
      std::memcpy(&j.head_w[(g * F + r) * GW], head_w.typed_data() + r * j.V + g * GW, n * sizeof(float));
    std::memcpy(&j.head_b[g * GW], head_b.typed_data() + g * GW, n * sizeof(float));
  }
  j.logits.assign(j.B * j.head_groups * GW, 0.0f);
  j.table = table.typed_data();
  j.out = out->typed_data();
  j.tok.assign(first.typed_data(), first.typed_data() + j.B);
  // Layer 0 reads the table's row of each stream's token: one outside it would be read out of bounds.
  const bool ids_ok =
      std::all_of(j.tok.begin(), j.tok.end(), [&](int32_t id) { return id >= 0 && id < j.V; });
  if (auto e = check(ids_ok, "first tokens must be ids in [0, V)"); !e.success()) return e;
  if (j.N > 0)
    for (int64_t b = 0; b < j.B; ++b) j.out[b * j.N] = j.tok[b];
  const int64_t nthreads = std::max<int64_t>(1, threads);
  j.set_phases(nthreads);
  const int64_t delay_us = test_helper_delay_us();
  auto helper = [job, delay_us] {
    if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    CpuSpread::Away away(job->cpus);
    job->work(job->helper_ids.fetch_add(1, std::memory_order_relaxed));
  };
  j.cpus.hold();
  NewThreads spawn;
  for (int64_t k = 1; k < nthreads && j.total > 0; ++k) {
    auto task = helper;
    if (pool.num_threads() > 0)
      pool.Schedule(std::move(task));
    else
      spawn(std::move(task));
  }
  j.work(0);
  j.wait_done(j.total);
  return ffi::Error::Success();
}

// The calls' signatures. Forward: (w, bias, zx or xs, mask [T, B] (1 = real step), h0, c0, rmask [B, H])
// -> (acts [T, B, 4H], outs [T, B, H], h_T, c_T, hc [T, B, 2H]); w is rk [H, 4H] with zx [T, B, 4H] (acts
// aliases zx), or [kernel; rk] [F + H, 4H] with xs [T, B, F].
auto forward_binding() {
  using B = ffi::Buffer<ffi::F32>;
  return ffi::Ffi::Bind()
      .Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>()
      .Ret<B>().Ret<B>().Ret<B>().Ret<B>().Ret<B>()
      .Ctx<ffi::ThreadPool>()
      .Attr<int32_t>("reverse")
      .Attr<int32_t>("threads");
}

// Backward: (w^T [4H, F + H], acts, hc, mask, d outs [T, B, H] or unused, d h_T, d c_T, rmask, and for the
// x call xs [T, B, F]) -> (dz [T, B, 4H] aliasing acts, then for the x call d xs [T, B, F], then d h_0,
// d c_0, dw [F + H, 4H], db [4H]; the attribute weight_grads: 0 neither (both unused), 1 both, 2 db only).
auto forward_ids_binding() {
  using B = ffi::Buffer<ffi::F32>;
  return ffi::Ffi::Bind()
      .Arg<B>().Arg<B>().Arg<B>().Arg<ffi::Buffer<ffi::S32>>().Arg<B>().Arg<B>().Arg<B>().Arg<B>()
      .Ret<B>().Ret<B>().Ret<B>().Ret<B>().Ret<B>()
      .Ctx<ffi::ThreadPool>()
      .Attr<int32_t>("reverse")
      .Attr<int32_t>("threads");
}

auto scatter_rows_binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::S32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Ctx<ffi::ThreadPool>()
      .Attr<int32_t>("threads");
}

auto backward_binding() {
  using B = ffi::Buffer<ffi::F32>;
  return ffi::Ffi::Bind()
      .Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>()
      .Ret<B>().Ret<B>().Ret<B>().Ret<B>().Ret<B>()
      .Ctx<ffi::ThreadPool>()
      .Attr<int32_t>("reverse")
      .Attr<int32_t>("threads")
      .Attr<int32_t>("has_dout")
      .Attr<int32_t>("weight_grads");
}

auto backward_x_binding() {
  using B = ffi::Buffer<ffi::F32>;
  return ffi::Ffi::Bind()
      .Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>().Arg<B>()
      .Ret<B>().Ret<B>().Ret<B>().Ret<B>().Ret<B>().Ret<B>()
      .Ctx<ffi::ThreadPool>()
      .Attr<int32_t>("reverse")
      .Attr<int32_t>("threads")
      .Attr<int32_t>("has_dout")
      .Attr<int32_t>("weight_grads");
}

}  // namespace

// The training calls' timing (see CallStats), read through ctypes by lstm_jax.native.
extern "C" void lstm_jax_native_stats_enable(int on) {
  g_stats_on.store(on != 0, std::memory_order_relaxed);
}

// Writes one line per call kind and shape, "key\tcalls\twall_ns\tstep_ns\tgemm_ns\thelpers\tstarted\t
// start_ns", into buf (at most n bytes, NUL-terminated) and clears the table; returns the bytes the lines
// need (when that is n or more nothing is written or cleared: call again with a larger buffer).
extern "C" int64_t lstm_jax_native_stats_take(char* buf, int64_t n) {
  std::lock_guard<std::mutex> lock(g_stats_mu);
  std::string out;
  for (const auto& [key, s] : g_stats)
    out += key + "\t" + std::to_string(s.calls) + "\t" + std::to_string(s.wall_ns) + "\t" +
           std::to_string(s.step_ns) + "\t" + std::to_string(s.gemm_ns) + "\t" +
           std::to_string(s.helpers) + "\t" + std::to_string(s.helpers_started) + "\t" +
           std::to_string(s.helper_start_ns) + "\n";
  const int64_t need = static_cast<int64_t>(out.size());
  if (need >= n) return need;
  std::memcpy(buf, out.c_str(), out.size() + 1);
  g_stats.clear();
  return need;
}

// The vector unit's fp32 multiply-add throughput on the calling thread, in GFLOP/s, for the benchmark's
// peak (benchmarks/ceiling.py runs it in one thread per core at once): 12 independent chains of VL-float
// multiply-adds in registers (enough in flight to cover the FMA latency of the machines measured: 4-5
// cycles, one or two FMA units), in rounds of 2^16 (about 0.3 ms here) until `seconds` have passed. Every
// lane of every chain goes into the result, so the compiler can drop none of them.
extern "C" double lstm_jax_native_fma_gflops(double seconds) {
  constexpr int CHAINS = 12;
  constexpr int64_t ROUND = 1 << 16;
  static volatile float sink = 0.0f;
  volatile float scale = 0.999f, shift = 0.001f;  // read at run time: nothing to fold
  const vf x = vf{} + scale, y = vf{} + shift;
  vf acc[CHAINS];
  for (int i = 0; i < CHAINS; ++i) acc[i] = vf{} + static_cast<float>(i);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t rounds = 0;
  double elapsed = 0.0;
  do {
    for (int64_t n = 0; n < ROUND; ++n)
      for (int i = 0; i < CHAINS; ++i) acc[i] = acc[i] * x + y;
    ++rounds;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (elapsed < seconds);
  float total = 0.0f;
  for (int i = 0; i < CHAINS; ++i)
    for (int l = 0; l < VL; ++l) total += acc[i][l];
  sink = total;
  return 2.0 * VL * CHAINS * static_cast<double>(ROUND) * rounds / elapsed / 1e9;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForward, LstmForwardImpl, forward_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForwardX, LstmForwardXImpl, forward_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForwardIds, LstmForwardIdsImpl, forward_ids_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(ScatterRows, ScatterRowsImpl, scatter_rows_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackward, LstmBackwardImpl, backward_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackwardX, LstmBackwardXImpl, backward_x_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmGenerate, LstmGenerateImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<int32_t>("threads")
                                  .Attr<int32_t>("top_k")
                                  .Attr<float>("temperature"));
