// Judge-score parsing: the grammar is the docstring of mpo_fast/parsing/spec.py (one contract for
// this parser, the Python oracle and the token-id kernel). Nothing here throws on bad text: every
// item of every text gets a status.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mpo_fast {
namespace parse {

enum Status : int8_t { kOk = 0, kMissing = 1, kMalformed = 2, kOutOfRange = 3, kAmbiguous = 4, kTruncated = 5 };
enum Format : int { kTag = 0, kKeyValue = 1, kJson = 2, kVerdict = 3, kBoxed = 4 };
enum Select : int { kFirst = 0, kLast = 1, kUnique = 2 };
enum Fractions : int { kScale = 0, kDivide = 1, kReject = 2 };

// A delimited value longer than this is not a score; it also bounds the work per candidate, so
// 10 MB of "<score>" repeats stays linear.
constexpr size_t kContentCap = 256;
// More digits in one number are MALFORMED rather than rounded: every accepted literal is then an
// exact float64 ratio M / 10^f (M < 2^53), so CPU, GPU and Python agree bit for bit.
constexpr int kDigitCap = 15;

struct Spec {
  int format = kTag;
  int k = 1;
  bool by_name = false;
  std::vector<std::string> names;  // base names (no nonce): k when by_name, else 1 (0 for boxed)
  std::string nonce;               // applied to tag / json / verdict names as NAME-nonce
  int select = kLast;
  bool integer = true;
  int fractions = kScale;
  std::vector<double> lo, hi;  // k each
  std::vector<std::string> labels;
  std::vector<double> label_values;
  bool case_sensitive = false;
};

struct TextRef {
  const uint8_t* data;
  size_t size;
};

// Row-major outputs: values/status [n, k], spans [n, k, 2] (may be null).
struct Outputs {
  float* values;
  int8_t* status;
  int64_t* spans;
};

// Parses texts[0..n) into out, on up to num_threads threads. nonces: null, or one per text
// (replacing spec.nonce). Never throws.
void parse_batch(const TextRef* texts, size_t n, const Spec& spec, const std::string* nonces, const Outputs& out,
                 int num_threads) noexcept;

}  // namespace parse
}  // namespace mpo_fast
