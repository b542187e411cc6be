// Does the order in which one core reads its share of the char model's weights decide whether they come
// from its L2? One core's share of native generation (lstm_jax/native/lstm_cpu.cc, GenJob) for shape A:
// G0 column groups of [300, 128] (layer 0) then G1 of [600, 128] (layer 1), one row times each group per
// step, the groups read in the same order every step (mode 0) or in alternating order (mode 1).
//
//   g++ -O3 -march=native benchmarks/cache_order.cc -o /tmp/cache_order && /tmp/cache_order 5 5 0 && \
//     /tmp/cache_order 5 5 1
//
// Prints microseconds per step and the weight bandwidth.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

typedef float vf __attribute__((vector_size(64), aligned(4)));  // 16 floats, whatever the vector unit

static void group(const float* a, const float* W, float* c, int K) {
  vf acc[8] = {};
  for (int k = 0; k < K; ++k) {
    const float x = a[k];
    for (int v = 0; v < 8; ++v) acc[v] += x * *reinterpret_cast<const vf*>(W + k * 128 + v * 16);
  }
  for (int v = 0; v < 8; ++v) *reinterpret_cast<vf*>(c + v * 16) = acc[v];
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: cache_order G0 G1 MODE (0: same order, 1: alternating)\n");
    return 2;
  }
  const int G0 = std::atoi(argv[1]), G1 = std::atoi(argv[2]), mode = std::atoi(argv[3]);
  const int steps = 3000;
  std::vector<float> W0(static_cast<size_t>(G0) * 300 * 128), W1(static_cast<size_t>(G1) * 600 * 128);
  for (size_t i = 0; i < W0.size(); ++i) W0[i] = (i % 97) * 1e-5f;
  for (size_t i = 0; i < W1.size(); ++i) W1[i] = (i % 89) * 1e-5f;
  std::vector<float> x(600, 0.01f), y(128 * std::max(G0, G1));
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) {
      const bool rev = mode == 1 && (s & 1);
      for (int i = 0; i < G0; ++i) {
        const int g = rev ? G0 - 1 - i : i;
        group(x.data(), W0.data() + static_cast<size_t>(g) * 300 * 128, y.data() + g * 128, 300);
      }
      for (int i = 0; i < G1; ++i) {
        const int g = rev ? G1 - 1 - i : i;
        group(x.data(), W1.data() + static_cast<size_t>(g) * 600 * 128, y.data() + g * 128, 600);
      }
      x[0] = y[0] * 1e-3f;
    }
    const double us =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps * 1e6;
    best = std::min(best, us);
  }
  const double mb = (W0.size() + W1.size()) * 4 / 1e6;
  std::printf("G0=%d G1=%d (%.2f MB) %s: %.1f us/step, %.1f GB/s\n", G0, G1, mb,
              mode ? "alternating" : "same order", best, mb * 1e3 / best);
}
