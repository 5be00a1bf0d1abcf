// random_checkpoint: writes a Hugging Face checkpoint of random weights for a DeepSeek-V3/V2
// config.json (see random_checkpoint.hpp for the values and the layout).
//   random_checkpoint --config config.json --out DIR [--dtype bf16|fp8] [--seed N]
//                     [--shard-bytes N]
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <string_view>

#include "lightcore/core/error.hpp"
#include "random_checkpoint.hpp"

namespace {

constexpr char usage[] =
    "usage: random_checkpoint --config config.json --out DIR [--dtype bf16|fp8] [--seed N]\n"
    "                         [--shard-bytes N]\n"
    "  --config       a DeepSeek-V3/R1 or V2 config.json\n"
    "  --out          output directory (config.json, model-*.safetensors, index)\n"
    "  --dtype        bf16, or fp8 (128x128 block-scaled e4m3); default: fp8 when the config\n"
    "                 has a quantization_config, else bf16\n"
    "  --seed         random seed (default 0); the same seed writes the same bytes\n"
    "  --shard-bytes  largest shard in bytes (default 5000000000)\n";

std::uint64_t parse_u64(std::string_view flag, std::string const& value) {
  std::size_t used = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(value, &used, 0);
  } catch (std::exception const&) {
    used = 0;
  }
  LC_CHECK(used == value.size() && !value.empty() && value[0] != '-',
           flag << " needs a non-negative integer; got \"" << value << "\"");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  using lightcore::tools::weight_format;
  lightcore::tools::random_checkpoint_options opt;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string_view const flag = argv[i];
      if (flag == "--help" || flag == "-h") {
        std::cout << usage;
        return 0;
      }
      LC_CHECK(i + 1 < argc, flag << " needs a value\n" << usage);
      std::string const value = argv[++i];
      if (flag == "--config") {
        opt.config = value;
      } else if (flag == "--out") {
        opt.out = value;
      } else if (flag == "--dtype") {
        LC_CHECK(value == "bf16" || value == "fp8",
                 "--dtype " << value << " is not supported; allowed: bf16, fp8");
        opt.format = value == "bf16" ? weight_format::bf16 : weight_format::fp8;
      } else if (flag == "--seed") {
        opt.seed = parse_u64(flag, value);
      } else if (flag == "--shard-bytes") {
        opt.shard_bytes = parse_u64(flag, value);
      } else {
        LC_THROW("unknown option " << flag << "\n" << usage);
      }
    }
    LC_CHECK(!opt.config.empty() && !opt.out.empty(), "--config and --out are required\n" << usage);
  } catch (lightcore::error const& e) {
    std::cerr << "random_checkpoint: " << e.message();
    if (e.message().back() != '\n') std::cerr << '\n';
    return 2;
  }
  try {
    auto const s = lightcore::tools::write_random_checkpoint(opt);
    std::cout << "random_checkpoint: wrote " << s.tensors << " tensors (" << s.data_bytes
              << " bytes) in " << s.shards << " shard(s) to " << opt.out.string() << '\n';
    return 0;
  } catch (std::exception const& e) {
    std::cerr << "random_checkpoint: " << e.what() << '\n';
    return 1;
  }
}
