// mdl_run.cc -- the native MobileDL runner, a client of mdl_runtime.h (no Python, no TVM headers).
//
//   mdl_run MODEL.so [-i IN0.npy ...] [-o DIR] [-n RUNS] [-w WARMUP] [-t THREADS]
//                    [--check-main] [--memory] [--quiet] [--count]
//
// Loads MODEL.so, reads each input .npy straight into its preset 64-byte aligned buffer
// (dtype and shape checked), runs main_zc RUNS times after WARMUP untimed runs, prints each
// inference's latency and a summary, and writes the outputs as DIR/out0.npy, out1.npy, ...
// Without -i the inputs are a fixed pseudo-random pattern. --check-main also runs the
// allocating `main` once and prints max |main - main_zc|; --memory the process's peak
// resident memory at the end (Linux VmHWM; under QEMU user mode, QEMU's). --count is the
// instruction-count mode: no clock is read and nothing depends on time, so two runs retire
// the same instructions. Exit status: 0 success, 1 failure (the message says why), 2 bad arguments.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "mdl_runtime.h"

namespace {

[[noreturn]] void Die(const std::string& msg, int code = 1) {
  std::fprintf(stderr, "mdl_run: error: %s\n", msg.c_str());
  std::exit(code);
}

// .npy descr of a TVM dtype string (little-endian machines only).
std::string NpyDescr(const std::string& dtype) {
  static const char* table[][2] = {
      {"float32", "<f4"}, {"float16", "<f2"}, {"float64", "<f8"}, {"int8", "|i1"},
      {"uint8", "|u1"},   {"int16", "<i2"},   {"int32", "<i4"},   {"int64", "<i8"},
      {"uint16", "<u2"},  {"uint32", "<u4"},  {"uint64", "<u8"},  {"bool", "|b1"}};
  for (auto& row : table)
    if (dtype == row[0]) return row[1];
  Die("no .npy type for the model's dtype " + dtype);
}

std::string ShapeText(const mdl_tensor_info& t) {
  std::string s = "(";
  for (int k = 0; k < t.ndim; ++k)
    s += std::to_string(t.shape[k]) + (t.ndim == 1 ? "," : k + 1 < t.ndim ? ", " : "");
  return s + ")";
}

std::string NoSpaces(std::string x) {
  x.erase(std::remove(x.begin(), x.end(), ' '), x.end());
  return x;
}

// Reads a C-order .npy (format 1-3) straight into `dst` after checking dtype and shape.
void ReadNpy(const std::string& path, int index, const mdl_tensor_info& t, void* dst) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Die("cannot open input " + path + ": " + std::strerror(errno));
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    Die(path + " is not a .npy file: save inputs with numpy.save");
  unsigned char b[4] = {0, 0, 0, 0};
  f.read(reinterpret_cast<char*>(b), magic[6] == 1 ? 2 : 4);
  uint32_t hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  std::string header(hlen, '\0');
  f.read(&header[0], hlen);
  if (!f) Die(path + ": truncated .npy header");
  auto field = [&](const char* key) {
    size_t p = header.find(key);
    if (p == std::string::npos) Die(path + ": .npy header lacks " + key);
    return header.substr(p + std::strlen(key));
  };
  std::string want_shape = NoSpaces(ShapeText(t)), want_descr = NpyDescr(t.dtype);
  std::string what = "input " + std::to_string(index) + " of the model is " + t.dtype + want_shape;
  std::string descr = field("'descr':");
  descr = descr.substr(descr.find('\'') + 1);
  descr = descr.substr(0, descr.find('\''));
  if (descr != want_descr)
    Die(path + " holds dtype '" + descr + "', " + what + " ('" + want_descr + "'): convert it, "
        "e.g. np.save(path, x.astype('" + t.dtype + "'))");
  std::string fortran = field("'fortran_order':");
  if (fortran.find("True") < fortran.find(','))
    Die(path + " is in Fortran order: save a C-contiguous array (np.ascontiguousarray)");
  std::string shape = field("'shape':");
  shape = NoSpaces(shape.substr(0, shape.find(')') + 1));
  if (shape != want_shape) Die(path + " holds shape " + shape + ", " + what);
  f.read(static_cast<char*>(dst), static_cast<std::streamsize>(t.nbytes));
  if (static_cast<size_t>(f.gcount()) != t.nbytes) Die(path + ": truncated data");
}

void WriteNpy(const std::string& path, const mdl_tensor_info& t) {
  std::string header = "{'descr': '" + NpyDescr(t.dtype) + "', 'fortran_order': False, " +
                       "'shape': " + ShapeText(t) + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) Die("cannot write " + tmp + ": " + std::strerror(errno));
    uint16_t hlen = static_cast<uint16_t>(header.size());
    char len[2] = {static_cast<char>(hlen & 0xff), static_cast<char>(hlen >> 8)};
    f.write("\x93NUMPY\x01\x00", 8);
    f.write(len, 2);
    f << header;
    f.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
    if (!f) Die("writing " + tmp + " failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) Die("cannot rename " + tmp + " to " + path);
}

void FillPattern(const mdl_tensor_info& t, uint32_t seed) {
  uint32_t x = seed * 2654435761u + 1;
  auto next = [&] { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x; };
  if (std::string(t.dtype) == "float32") {
    auto* p = static_cast<float*>(t.data);
    for (size_t i = 0; i < t.nbytes / 4; ++i) p[i] = (next() >> 8) * (2.0f / 16777216.0f) - 1.0f;
  } else {
    auto* p = static_cast<unsigned char*>(t.data);
    for (size_t i = 0; i < t.nbytes; ++i) p[i] = static_cast<unsigned char>(next() >> 24);
  }
}

double MaxAbsDiff(const mdl_tensor_info& t, const void* a, const void* b) {
  if (std::string(t.dtype) != "float32") return std::memcmp(a, b, t.nbytes) == 0 ? 0.0 : INFINITY;
  auto* x = static_cast<const float*>(a);
  auto* y = static_cast<const float*>(b);
  double m = 0;
  for (size_t i = 0; i < t.nbytes / 4; ++i) m = std::max(m, std::fabs(double(x[i]) - y[i]));
  return m;
}

mdl_tensor_info Tensor(mdl_model* m, bool input, int i) {
  mdl_tensor_info t;
  if ((input ? mdl_input_info(m, i, &t) : mdl_output_info(m, i, &t)) != 0) Die(mdl_last_error());
  return t;
}

void CheckMain(mdl_model* m) {  // allocating `main` into scratch outputs vs main_zc's
  int no = mdl_num_outputs(m);
  std::vector<std::vector<unsigned char>> zc(no);
  std::vector<void*> scratch(no);
  for (int j = 0; j < no; ++j) {
    mdl_tensor_info t = Tensor(m, false, j);
    zc[j].assign(static_cast<unsigned char*>(t.data), static_cast<unsigned char*>(t.data) + t.nbytes);
    scratch[j] = std::aligned_alloc(MDL_ALIGN, (t.nbytes + MDL_ALIGN - 1) / MDL_ALIGN * MDL_ALIGN);
    if (mdl_bind_output(m, j, scratch[j]) != 0) Die(mdl_last_error());
  }
  if (mdl_run_main(m) != 0) Die(std::string("main failed: ") + mdl_last_error());
  for (int j = 0; j < no; ++j) {
    mdl_tensor_info t = Tensor(m, false, j);
    std::printf("main vs main_zc output %d: max |diff| = %g\n", j, MaxAbsDiff(t, t.data, zc[j].data()));
    mdl_bind_output(m, j, nullptr);
    std::free(scratch[j]);
  }
}

int Count(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end || v < 0 || v > 1000000000) Die(flag + " takes a count >= 0, got " + text, 2);
  return static_cast<int>(v);
}

long PeakKiB() {  // VmHWM of /proc/self/status, -1 where there is none
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return -1;
}

using Clock = std::chrono::steady_clock;
double Ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage = "usage: mdl_run MODEL.so [-i IN0.npy ...] [-o DIR] [-n RUNS] [-w WARMUP] "
                      "[-t THREADS] [--check-main] [--memory] [--quiet] [--count]\n";
  if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
    std::fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string lib = argv[1], out_dir;
  std::vector<std::string> in_paths;
  int runs = 10, warmup = 1, threads = -1;
  bool check_main = false, memory = false, quiet = false, count = false;
  for (int a = 2; a < argc; ++a) {
    std::string s = argv[a];
    auto value = [&] {
      if (a + 1 >= argc) Die(s + " needs a value\n" + usage, 2);
      return std::string(argv[++a]);
    };
    if (s == "-i") in_paths.push_back(value());
    else if (s == "-o") out_dir = value();
    else if (s == "-n") runs = Count(s, value());
    else if (s == "-w") warmup = Count(s, value());
    else if (s == "-t") threads = Count(s, value());
    else if (s == "--check-main") check_main = true;
    else if (s == "--memory") memory = true;
    else if (s == "--quiet") quiet = true;
    else if (s == "--count") count = quiet = true;
    else Die("unknown argument " + s + "\n" + usage, 2);
  }
  if (threads >= 0 && mdl_set_num_threads(threads) != 0) Die(mdl_last_error());

  auto t0 = Clock::now();
  mdl_model* m = mdl_load(lib.c_str());
  if (!m) Die(mdl_last_error());
  int ni = mdl_num_inputs(m), no = mdl_num_outputs(m);
  if (count) std::printf("loaded %s", lib.c_str());
  else std::printf("loaded %s in %.1f ms", lib.c_str(), Ms(t0));
  std::printf(": %d input(s), %d output(s), workspace %zu bytes\n", ni, no, mdl_workspace_bytes(m));
  if (!in_paths.empty() && static_cast<int>(in_paths.size()) != ni)
    Die("the model takes " + std::to_string(ni) + " input(s), got " +
        std::to_string(in_paths.size()) + " -i file(s)", 2);
  for (int i = 0; i < ni; ++i) {
    mdl_tensor_info t = Tensor(m, true, i);
    std::printf("input %d: %s%s\n", i, t.dtype, ShapeText(t).c_str());
    if (in_paths.empty()) FillPattern(t, i + 1);
    else ReadNpy(in_paths[i], i, t, t.data);
  }

  std::vector<double> ms;
  for (int r = 0; r < warmup + runs; ++r) {
    auto s = count ? Clock::time_point() : Clock::now();
    if (mdl_run(m) != 0) Die(std::string("run failed: ") + mdl_last_error());
    if (count || r < warmup) continue;
    ms.push_back(Ms(s));
    if (!quiet) std::printf("run %d: %.3f ms\n", r - warmup, ms.back());
  }
  if (!ms.empty()) {
    std::vector<double> v = ms;
    std::sort(v.begin(), v.end());
    double mean = 0;
    for (double d : v) mean += d / v.size();
    std::printf("main_zc over %zu runs: min %.3f  median %.3f  mean %.3f  max %.3f ms\n",
                v.size(), v.front(), v[v.size() / 2], mean, v.back());
  }

  if (!out_dir.empty() && mkdir(out_dir.c_str(), 0777) != 0 && errno != EEXIST)
    Die("cannot create " + out_dir + ": " + std::strerror(errno));
  for (int j = 0; j < no; ++j) {
    mdl_tensor_info t = Tensor(m, false, j);
    std::printf("output %d: %s%s", j, t.dtype, ShapeText(t).c_str());
    if (std::string(t.dtype) == "float32") {
      auto* p = static_cast<const float*>(t.data);
      size_t n = t.nbytes / 4, arg = 0;
      for (size_t k = 1; k < n; ++k) if (p[k] > p[arg]) arg = k;
      std::printf(" first [");
      for (size_t k = 0; k < std::min<size_t>(n, 4); ++k) std::printf("%s%.6g", k ? ", " : "", p[k]);
      std::printf("%s] argmax %zu", n > 4 ? ", ..." : "", arg);
    }
    std::printf("\n");
    if (!out_dir.empty()) WriteNpy(out_dir + "/out" + std::to_string(j) + ".npy", t);
  }
  if (check_main) CheckMain(m);
  mdl_free(m);
  if (memory) std::printf("peak memory %ld KiB (VmHWM)\n", PeakKiB());
  return 0;
}
