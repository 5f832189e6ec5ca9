// The bundle reader; what it checks, and in which order, is in bundle.h.
#include "bundle.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "errors.h"
#include "json.h"
#include "sha256.h"

namespace vqrt {

namespace {

const char kManifestFile[] = "manifest.json";
const char kRebuild[] = "rebuild it with `vqrt build`";

struct FileEntry {
  std::string path, sha256;
  int64_t size = 0;
};

// What the manifest says besides BundleManifest: the files and who names them.
struct Listing {
  std::vector<FileEntry> files;
  std::vector<std::pair<std::string, std::string>> referenced;  // (file, what names it)
};

// A POSIX file descriptor closed on scope exit.
struct Fd {
  explicit Fd(int fd_) : fd(fd_) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int fd;
};

// Reads `size` bytes of the open file into out (resized to size); false on a short read.
bool read_exactly(int fd, int64_t size, std::vector<uint8_t>& out) {
  out.resize(size);
  int64_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, out.data() + done, static_cast<size_t>(size - done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += n;
  }
  return true;
}

// --- manifest -------------------------------------------------------------------------------

std::pair<int64_t, int64_t> int_pair(const JsonValue& v, const std::string& where) {
  const auto& items = v.as_array(where);
  VQRT_CHECK(items.size() == 2, where << " must have 2 entries");
  return {items[0].as_int(where + "[0]"), items[1].as_int(where + "[1]")};
}

// A field that may be null or absent (a dataclass default of None): nullptr then.
const JsonValue* optional(const JsonValue& section, const std::string& key) {
  const JsonValue* v = section.find(key);
  return v == nullptr || v->is_null() ? nullptr : v;
}

void read_first_stage(const JsonValue& s, const std::string& where, BundleManifest& m) {
  s.check_fields({"image_channels", "training_size", "downsampling_factor", "training_grid",
                  "codebook_size", "codebook_dim", "quantizer", "value_range"}, where);
  s.at("image_channels", where).as_int(where + ".image_channels");
  int_pair(s.at("training_size", where), where + ".training_size");
  m.downsampling_factor = s.at("downsampling_factor", where).as_int(where + ".downsampling_factor");
  std::tie(m.training_grid_h, m.training_grid_w) =
      int_pair(s.at("training_grid", where), where + ".training_grid");
  m.codebook_size = s.at("codebook_size", where).as_int(where + ".codebook_size");
  s.at("codebook_dim", where).as_int(where + ".codebook_dim");
  s.at("quantizer", where).as_string(where + ".quantizer");
  const auto& range = s.at("value_range", where).as_array(where + ".value_range");
  VQRT_CHECK(range.size() == 2, where << ".value_range must have 2 entries");
  for (const JsonValue& v : range) v.as_number(where + ".value_range[]");
}

void read_transformer(const JsonValue& s, const std::string& where, BundleManifest& m) {
  s.check_fields({"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "head_dim",
                  "n_unmasked"}, where);
  m.has_transformer = true;
  m.vocab_size = s.at("vocab_size", where).as_int(where + ".vocab_size");
  m.block_size = s.at("block_size", where).as_int(where + ".block_size");
  m.n_layer = s.at("n_layer", where).as_int(where + ".n_layer");
  m.n_head = s.at("n_head", where).as_int(where + ".n_head");
  m.n_embd = s.at("n_embd", where).as_int(where + ".n_embd");
  s.at("head_dim", where).as_int(where + ".head_dim");
  s.at("n_unmasked", where).as_int(where + ".n_unmasked");
}

void read_tokenization(const JsonValue& s, const std::string& where, BundleManifest& m) {
  s.check_fields({"order", "layout", "prefix"}, where);
  m.order = s.at("order", where).as_string(where + ".order");
  std::string layout;
  for (const JsonValue& part : s.at("layout", where).as_array(where + ".layout")) {
    layout += (layout.empty() ? "" : ",") + part.as_string(where + ".layout[]");
  }
  VQRT_CHECK(layout == "cond,image", where << ".layout must be [cond, image], got [" << layout
                                           << "]");
  m.prefix_rule = s.at("prefix", where).as_string(where + ".prefix");
}

void read_conditioning(const JsonValue& s, const std::string& where, BundleManifest& m) {
  s.check_fields({"kind", "prefix_tokens", "n_classes", "sos_token", "cond_stage_key",
                  "cond_channels", "cond_resize", "coord_down_factor", "coord_n_embed"}, where);
  s.at("kind", where).as_string(where + ".kind");
  m.prefix_tokens = s.at("prefix_tokens", where).as_int(where + ".prefix_tokens");
  if (const JsonValue* v = optional(s, "n_classes")) m.n_classes = v->as_int(where + ".n_classes");
  if (const JsonValue* v = optional(s, "sos_token")) m.sos_token = v->as_int(where + ".sos_token");
  if (const JsonValue* v = optional(s, "cond_stage_key")) v->as_string(where + ".cond_stage_key");
  for (const char* key : {"cond_channels", "cond_resize", "coord_down_factor", "coord_n_embed"}) {
    if (const JsonValue* v = optional(s, key)) v->as_int(where + "." + key);
  }
}

void read_limits(const JsonValue& s, const std::string& where, BundleManifest& m) {
  s.check_fields({"max_batch", "max_latent", "max_sequence"}, where);
  m.max_batch = s.at("max_batch", where).as_int(where + ".max_batch");
  std::tie(m.max_latent_h, m.max_latent_w) =
      int_pair(s.at("max_latent", where), where + ".max_latent");
  if (const JsonValue* v = optional(s, "max_sequence")) v->as_int(where + ".max_sequence");
}

void read_native(const JsonValue& s, const std::string& where, BundleManifest& m) {
  s.check_fields({"file", "precision", "layout"}, where);
  m.native_file = s.at("file", where).as_string(where + ".file");
  m.native_precision = s.at("precision", where).as_string(where + ".precision");
  m.native_layout = s.at("layout", where).as_string(where + ".layout");
}

// graphs: {name: GraphSpec}; only the file names are read.
void read_graphs(const JsonValue& graphs, Listing& listing) {
  for (const auto& [name, g] : graphs.as_object("manifest.graphs")) {
    const std::string where = "manifest.graphs." + name;
    g.check_fields({"file", "precision", "opset", "inputs", "outputs", "external_data"}, where);
    listing.referenced.emplace_back(g.at("file", where).as_string(where + ".file"),
                                    "graph " + name);
    if (const JsonValue* data = optional(g, "external_data")) {
      listing.referenced.emplace_back(data->as_string(where + ".external_data"),
                                      "graph " + name + " (external data)");
    }
  }
}

void read_tensorrt(const JsonValue& s, Listing& listing) {
  const std::string where = "manifest.tensorrt";
  s.check_fields({"version", "gpu", "compute_capability", "engines"}, where);
  for (const auto& [name, e] : s.at("engines", where).as_object(where + ".engines")) {
    const std::string at = where + ".engines." + name;
    e.check_fields({"file", "graph", "precision", "profile"}, at);
    listing.referenced.emplace_back(e.at("file", at).as_string(at + ".file"),
                                    "TensorRT engine " + name);
  }
}

// The C API does not decode images; it only checks that the files the section names are listed.
void read_tiled_decoder(const JsonValue& s, Listing& listing) {
  const std::string where = "manifest.tiled_decoder";
  s.check_fields({"format", "program", "tensors", "weights"}, where);
  s.at("format", where).as_string(where + ".format");
  for (const char* part : {"program", "tensors", "weights"}) {
    listing.referenced.emplace_back(s.at(part, where).as_string(where + "." + part),
                                    std::string("tiled decoder ") + part);
  }
}

// Int8 graphs run as any graph; only the calibration caches the section names are checked.
void read_quantization(const JsonValue& s, Listing& listing) {
  const std::string where = "manifest.quantization";
  s.check_fields({"calibration_data", "calibration_sha256", "calibration_images",
                  "held_out_images", "graphs", "native", "quality"}, where);
  for (const auto& [name, g] : s.at("graphs", where).as_object(where + ".graphs")) {
    const std::string at = where + ".graphs." + name;
    g.check_fields({"calibration_cache", "recipe", "fp32_nodes"}, at);
    listing.referenced.emplace_back(
        g.at("calibration_cache", at).as_string(at + ".calibration_cache"),
        "calibration cache of graph " + name);
  }
  s.at("quality", where).as_object(where + ".quality");
}

void read_files(const JsonValue& files, Listing& listing) {
  const auto& items = files.as_array("manifest.files");
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string where = "manifest.files[" + std::to_string(i) + "]";
    items[i].check_fields({"path", "sha256", "size"}, where);
    FileEntry e;
    e.path = items[i].at("path", where).as_string(where + ".path");
    e.sha256 = items[i].at("sha256", where).as_string(where + ".sha256");
    e.size = items[i].at("size", where).as_int(where + ".size");
    listing.files.push_back(std::move(e));
  }
}

// The Manifest dataclass's fields, in schema order.
const std::vector<std::string> kManifestFields = {
    "schema_version", "created",  "kind",   "requested_precision", "backends", "model_card",
    "first_stage",    "transformer", "tokenization", "conditioning", "limits", "graphs",
    "kv_cache",       "native",   "tensorrt", "tiled_decoder", "files", "tools", "parity",
    "quantization", "notes"};

void parse_manifest(const std::vector<uint8_t>& text, BundleManifest& m, Listing& listing) {
  const JsonValue doc = parse_json(reinterpret_cast<const char*>(text.data()), text.size());
  doc.as_object("the manifest");
  const JsonValue* version = doc.find("schema_version");
  bool supported = false;
  std::string shown = "missing";
  if (version != nullptr && version->kind() == JsonValue::Kind::number) {
    try {
      const int64_t v = version->as_int("schema_version");
      shown = std::to_string(v);
      supported = v == kBundleSchemaVersion;
    } catch (const Error&) {
      shown = "(not an integer)";
    }
  } else if (version != nullptr) {
    shown = "(not a number)";
  }
  VQRT_CHECK(supported, "schema version " << shown << " is not supported (this vqrt reads version "
                                          << kBundleSchemaVersion << "); " << kRebuild
                                          << " of this vqrt");
  doc.check_fields(kManifestFields, "manifest");
  for (const std::string& field : kManifestFields) doc.at(field, "manifest");

  doc.at("created", "manifest").as_string("manifest.created");
  m.kind = doc.at("kind", "manifest").as_string("manifest.kind");
  doc.at("requested_precision", "manifest").as_string("manifest.requested_precision");
  for (const JsonValue& b : doc.at("backends", "manifest").as_array("manifest.backends")) {
    b.as_string("manifest.backends[]");
  }
  doc.at("model_card", "manifest").as_object("manifest.model_card");
  read_first_stage(doc.at("first_stage", "manifest"), "manifest.first_stage", m);
  if (const JsonValue* s = optional(doc, "transformer")) {
    read_transformer(*s, "manifest.transformer", m);
  }
  if (const JsonValue* s = optional(doc, "tokenization")) {
    read_tokenization(*s, "manifest.tokenization", m);
  }
  if (const JsonValue* s = optional(doc, "conditioning")) {
    read_conditioning(*s, "manifest.conditioning", m);
  }
  read_limits(doc.at("limits", "manifest"), "manifest.limits", m);
  read_graphs(doc.at("graphs", "manifest"), listing);
  if (const JsonValue* s = optional(doc, "kv_cache")) s->as_object("manifest.kv_cache");
  if (const JsonValue* s = optional(doc, "native")) {
    read_native(*s, "manifest.native", m);
    listing.referenced.emplace_back(m.native_file, "native weights");
  }
  if (const JsonValue* s = optional(doc, "tensorrt")) read_tensorrt(*s, listing);
  if (const JsonValue* s = optional(doc, "tiled_decoder")) read_tiled_decoder(*s, listing);
  read_files(doc.at("files", "manifest"), listing);
  for (const auto& [tool, version_text] : doc.at("tools", "manifest").as_object("manifest.tools")) {
    version_text.as_string("manifest.tools." + tool);
  }
  doc.at("parity", "manifest").as_object("manifest.parity");
  if (const JsonValue* s = optional(doc, "quantization")) read_quantization(*s, listing);
  for (const JsonValue& n : doc.at("notes", "manifest").as_array("manifest.notes")) {
    n.as_string("manifest.notes[]");
  }
}

// --- files ----------------------------------------------------------------------------------

// `text` for a message: control characters (a NUL would end it) as \xNN, as Python's repr.
std::string printable(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x20) {
      out += c;
      continue;
    }
    static const char kHex[] = "0123456789abcdef";
    out += "\\x";
    out += kHex[(c >> 4) & 15];
    out += kHex[c & 15];
  }
  return out;
}

// root/relative after runtime/bundle.py's _check_inside: a plain relative path whose every
// component exists and is not a symlink, ending at a regular file.
std::string check_inside(const std::string& root, const std::string& relative) {
  bool plain = !relative.empty() && relative[0] != '/' &&
               relative.find('\\') == std::string::npos &&
               relative.find('\0') == std::string::npos;
  std::vector<std::string> parts;
  for (size_t start = 0; plain;) {
    const size_t slash = relative.find('/', start);
    parts.push_back(relative.substr(start, slash == std::string::npos ? slash : slash - start));
    plain = parts.back() != ".." && parts.back() != "." && !parts.back().empty();
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  VQRT_CHECK(plain, root << "/" << kManifestFile << ": file path '" << printable(relative)
                         << "' leaves the bundle or is not a plain relative path; " << kRebuild);
  std::string current = root;
  struct stat st {};
  for (const std::string& part : parts) {
    current += "/" + part;
    if (::lstat(current.c_str(), &st) != 0) {
      VQRT_CHECK(errno != ENOENT, current << ": missing from the bundle; " << kRebuild);
      VQRT_CHECK(false, current << ": cannot be read (" << std::strerror(errno) << "); "
                                << kRebuild);
    }
    VQRT_CHECK(!S_ISLNK(st.st_mode),
               current << ": is a symlink, which a bundle may not contain; " << kRebuild);
  }
  VQRT_CHECK(S_ISREG(st.st_mode), current << ": not a regular file; " << kRebuild);
  return current;
}

// Checks the size and SHA-256 of one listed file; with `keep`, its bytes are read into *keep
// and hashed there.
void check_file(const std::string& path, const FileEntry& entry, std::vector<uint8_t>* keep) {
  Fd file(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  VQRT_CHECK(file.fd >= 0, path << ": cannot be opened (" << std::strerror(errno) << "); "
                                << kRebuild);
  struct stat st {};
  VQRT_CHECK(::fstat(file.fd, &st) == 0 && S_ISREG(st.st_mode),
             path << ": not a regular file; " << kRebuild);
  VQRT_CHECK(st.st_size == entry.size,
             path << ": " << st.st_size << " bytes, the manifest says " << entry.size
                  << " (changed or truncated after the build); " << kRebuild);
  Sha256 hash;
  if (keep != nullptr) {
    VQRT_CHECK(read_exactly(file.fd, entry.size, *keep),
               path << ": changed while it was read; " << kRebuild);
    hash.update(keep->data(), keep->size());
  } else {
    std::vector<uint8_t> chunk(1 << 20);
    for (;;) {
      const ssize_t n = ::read(file.fd, chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      VQRT_CHECK(n >= 0, path << ": cannot be read (" << std::strerror(errno) << ")");
      if (n == 0) break;
      hash.update(chunk.data(), static_cast<size_t>(n));
    }
  }
  VQRT_CHECK(to_hex(hash.finish()) == entry.sha256,
             path << ": SHA-256 does not match the manifest (changed after the build); "
                  << kRebuild);
}

}  // namespace

Bundle::Bundle(const std::string& dir) : path_(dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    const bool exists = ::stat(dir.c_str(), &st) == 0;
    VQRT_CHECK(false, dir << ": " << (exists ? "not a directory" : "no such directory")
                          << "; pass a bundle directory made by `vqrt build`");
  }
  const std::string manifest_path = dir + "/" + kManifestFile;
  std::vector<uint8_t> text;
  {
    Fd file(::open(manifest_path.c_str(), O_RDONLY | O_CLOEXEC));
    const bool is_file = file.fd >= 0 && ::fstat(file.fd, &st) == 0 && S_ISREG(st.st_mode);
    VQRT_CHECK(is_file, manifest_path << ": missing, so " << dir
                                      << " is not a bundle; build one with `vqrt build`");
    VQRT_CHECK(st.st_size <= kMaxManifest, manifest_path << ": " << st.st_size
                                                         << " bytes, more than a manifest's "
                                                         << kMaxManifest << "; " << kRebuild);
    VQRT_CHECK(read_exactly(file.fd, st.st_size, text),
               manifest_path << ": changed while it was read");
  }
  Listing listing;
  try {
    parse_manifest(text, manifest_, listing);
  } catch (const Error& e) {
    VQRT_CHECK(false, manifest_path << ": " << e.what());
  }

  std::vector<std::string> located;
  for (const FileEntry& entry : listing.files) located.push_back(check_inside(dir, entry.path));
  for (const auto& [file, user] : listing.referenced) {
    bool listed = false;
    for (const FileEntry& entry : listing.files) listed = listed || entry.path == file;
    VQRT_CHECK(listed, manifest_path << ": " << user << " names " << file
                                     << ", which is not in the file list; " << kRebuild);
  }
  std::vector<uint8_t> native_bytes;
  bool native_read = false;
  for (size_t i = 0; i < listing.files.size(); ++i) {
    const bool native = !manifest_.native_file.empty() &&
                        listing.files[i].path == manifest_.native_file && !native_read;
    check_file(located[i], listing.files[i], native ? &native_bytes : nullptr);
    native_read = native_read || native;
  }
  if (native_read) {
    native_ = std::make_unique<SafetensorsFile>(std::move(native_bytes),
                                                dir + "/" + manifest_.native_file);
  }
}

}  // namespace vqrt
