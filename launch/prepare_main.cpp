// moe-prepare: text (MiniMind's JSONL or plain files) -> tokenizer (SentencePiece or Hugging Face) -> token shards.
//   build/bin/moe-prepare --input corpus.jsonl --out_dir data/mine [--vocab_size 6400]
#include <iostream>

#include "common/log.h"
#include "launch/cli.h"
#include "trainer/data/prepare.h"

namespace po = boost::program_options;
using namespace moe;

int main(int argc, char** argv) try {
  trainer::PrepareOptions o;
  bool quiet = false;
  po::options_description desc(
      "moe-prepare: tokenize a corpus into token shards for moe-train\n"
      "  inputs: .jsonl files (one {\"text\": ...} per line, MiniMind's format), plain text files, or\n"
      "  directories of them; writes OUT_DIR/tokenizer.model, train-*.bin, val-*.bin, prepare.json");
  desc.add_options()("help", "show this help")
      ("input", po::value(&o.inputs)->multitoken()->required(), "input files or directories (several allowed)")
      ("out_dir", po::value(&o.out_dir)->required(), "output directory")
      ("vocab_size", po::value(&o.vocab_size)->default_value(o.vocab_size), "BPE vocabulary to train")
      ("tokenizer", po::value(&o.tokenizer), "use this SentencePiece .model or Hugging Face tokenizer.json (e.g. MiniMind's) instead of training one")
      ("val_fraction", po::value(&o.val_fraction)->default_value(o.val_fraction),
       "share of documents held out (every round(1/f)-th); 0 = none")
      ("shard_tokens", po::value(&o.shard_tokens)->default_value(o.shard_tokens), "tokens per shard at most")
      ("separator", po::value(&o.corpus.separator)->default_value(o.corpus.separator),
       "plain text: the line that ends a document (default: an empty line)")
      ("skip_malformed", po::bool_switch(&o.corpus.skip_malformed), "skip and count malformed JSONL lines")
      ("threads", po::value(&o.threads)->default_value(o.threads), "tokenizer training threads (0 = all)")
      ("quiet", po::bool_switch(&quiet), "no progress line");
  launch::parse_or_exit(argc, argv, desc);
  o.progress = !quiet;
  const auto s = trainer::prepare_corpus(o);
  std::cout << "[prepare] " << s.documents << " documents (" << s.val_documents << " held out), " << s.train_tokens
            << " training + " << s.val_tokens << " validation tokens in " << s.train_shards << " + " << s.val_shards
            << " shards, vocabulary " << s.vocab_size << ", " << s.seconds << " s ("
            << int64_t((s.train_tokens + s.val_tokens) / std::max(s.seconds, 1e-9)) << " tokens/s)";
  if (s.malformed_lines > 0) std::cout << "; " << s.malformed_lines << " malformed lines skipped";
  if (s.skipped_files > 0) std::cout << "; " << s.skipped_files << " files of other types skipped";
  std::cout << "\n[prepare] wrote " << o.out_dir << "/ (summary: prepare.json)\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
