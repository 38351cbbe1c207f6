// Replays inputs through the fuzz target without libFuzzer: `request_fuzzer_replay PATH...`
// runs the target over every file given and every file in every directory given (not
// recursive). The regression test of the checked-in corpus (tests/fuzz/corpus) in every build: a
// broken contract aborts, which fails the test. Seeds named for what they are must still be it:
// "valid_*" must validate and run, "bad_*" must be rejected by validation ("wire_*" and inputs
// the fuzzer found, "crash_*", may do anything but break the contract). Exit 1 when a seed is not
// what its name says, or when no input was found.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int AttentionFuzzRun(const uint8_t* data, size_t size);

namespace {

std::vector<std::string> Inputs(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return {};
  if (!S_ISDIR(st.st_mode)) return {path};
  std::vector<std::string> files;
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) return {};
  while (const dirent* entry = readdir(dir)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    const std::string file = path + "/" + name;
    if (stat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode)) files.push_back(file);
  }
  closedir(dir);
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

int main(int argc, char** argv) {
  int count = 0, wrong = 0;
  for (int i = 1; i < argc; ++i) {
    for (const std::string& file : Inputs(argv[i])) {
      std::ifstream in(file, std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                    std::istreambuf_iterator<char>());
      const int outcome =
          AttentionFuzzRun(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      const std::string name = file.substr(file.rfind('/') + 1);
      const bool ok = name.rfind("valid_", 0) == 0 ? outcome == 2
                      : name.rfind("bad_", 0) == 0 ? outcome == 1
                                                   : true;
      std::fprintf(stderr, "%s %s (%zu bytes): outcome %d\n", ok ? "ok" : "WRONG", file.c_str(),
                   bytes.size(), outcome);
      wrong += ok ? 0 : 1;
      ++count;
    }
  }
  std::fprintf(stderr, "replayed %d inputs, %d not what their name says\n", count, wrong);
  return count > 0 && wrong == 0 ? 0 : 1;
}
