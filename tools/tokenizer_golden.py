#!/usr/bin/env python3
"""Writes tests/data/tokenizer/golden.jsonl: Hugging Face `tokenizers`' ids for a fixed corpus.

The corpus (a few thousand strings, the same on every run) covers what a byte-level BPE tokenizer
can get wrong: ASCII prose, code, CJK, emoji with ZWJ sequences, skin tones and flags, mixed
scripts and combining marks, digit runs, white-space runs and Unicode spaces, tabs and newlines,
special-token strings inside text, very long words and random code points.

Each line of the output is one JSON object:
    {"meta": {...}}                               first line: versions, tokenizer hash, counts
    {"text": str, "ids": [int],                   encode(text, add_special_tokens=False)
     "ids_special": [int],                        encode(text, add_special_tokens=True), a subset
     "decoded": str, "decoded_skip": str}         decode(ids, skip_special_tokens=False / True),
                                                  each present only where it differs from text /
                                                  from "decoded"

add_special_tokens=True follows transformers' LlamaTokenizerFast (the class DeepSeek-V3's
tokenizer_config.json names): when the config sets add_bos_token / add_eos_token, the
post-processor becomes a template with the BOS / EOS around the text.

Usage (where `pip install tokenizers` works):
    python3 tools/tokenizer_golden.py --tokenizer-dir .cache/tokenizer \
        --out tests/data/tokenizer/golden.jsonl
    python3 tools/tokenizer_golden.py --corpus-only /tmp/corpus.jsonl   # texts only, no tokenizers
"""

import argparse
import hashlib
import json
import os
import random
import sys

SEED = 20261124
MAX_OUTPUT_BYTES = 2 * 1024 * 1024
SPECIAL_SUBSET_EVERY = 7  # every 7th string also gets ids_special

WORDS = (
    "the of and to in is was that for it with as his on be at by had are but from or have an "
    "they which one you were all we her she there would their will when who him been has more if "
    "no out do so can what up said about other into than its time only could new them man some "
    "these then two first may any like now my such make over our even most me state after also "
    "made many did must before back see through way where get much go well your know should down "
    "work year because come people just say each those take day good how long Mr own too little "
    "use US very great still men here life both between old under last never place same another "
    "think house while high right might came off find states since used give against three "
    "himself look few general hand school part small American home during number again Mrs "
    "around thought went without however govern don't does got public United point end become "
    "head once course fact upon need system set every war put form water took program present "
    "government thing told possible group large until always city didn't order away called want "
    "eyes something unit I'm I've we'll they'd it's you're DeepSeek tokenizer lightcore Hopper"
).split()

CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "#include <vector>\nstd::vector<int> v{1, 2, 3};\n",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
    "if __name__ == '__main__':\n    main()\n",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "template <class T>\nT const& max(T const& a, T const& b) { return a < b ? b : a; }",
    "git commit -m 'fix: off-by-one in ring buffer' && git push origin main",
    "<div class=\"row\"><span id='x'>&amp;&lt;&gt;</span></div>",
    "fn main() {\n    println!(\"{:?}\", vec![1u8; 4]);\n}\n",
    "$ echo $((1 + 2)) | tee -a /tmp/log.txt 2>&1",
    "    \t  mixed_indent = True\r\n\r\n",
    "a+=b;c-=d;e*=f;g/=h;i%=j;k<<=1;l>>=2;m&=n;o|=p;q^=r;",
    "__init__ __call__ self._cache[key] = value  # TODO(perf): LRU",
    "https://example.com/path/to/page?query=1&lang=en#section-2",
    "user@example.org, +1 (555) 010-9999, 2026-11-24T19:04:00Z",
]

CJK = (
    "我们今天讨论的是大型语言模型的推理服务。深度求索发布了新的模型，性能非常出色。"
    "日本語のテキストも含めます。ひらがな、カタカナ、漢字が混在しています。"
    "한국어 문장도 포함됩니다. 안녕하세요, 반갑습니다."
    "㐀㐁㐂 𠀀𠀁𠀂 龥龦龧 〇〡〢 ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　１２３"
)

EMOJI = [
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸🇬🇧", "❤️", "🧑🏿‍💻", "👩‍❤️‍💋‍👨",
    "🤷‍♂️", "🫠", "🦀", "1️⃣", "#️⃣", "✈️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "😶‍🌫️", "🐈‍⬛",
]

SCRIPTS = [
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Γειά σου Κόσμε, αβγδεζηθικλμνξοπρστυφχψω.",
    "مرحبا بالعالم، هذا نص عربي مع أرقام ١٢٣٤٥٦٧٨٩٠.",
    "שלום עולם, זהו טקסט בעברית.",
    "नमस्ते दुनिया, यह हिंदी पाठ है। ०१२३४५६७८९",
    "สวัสดีชาวโลก นี่คือข้อความภาษาไทย",
    "Ça va? Où est la bibliothèque? Ñandú, über, straße, ǅ, ﬁ ligature.",
    "e\u0301 a\u0308 o\u0302\u0323 Z\u0351\u0315a\u0327l\u035eg\u0358o\u0360",
    "Tiếng Việt có nhiều dấu: ắ ằ ẳ ẵ ặ.",
    "ქართული ენა, Հայերեն, አማርኛ, ᠮᠣᠩᠭᠣᠯ",
    "Ⅻ ⅓ ½ ² ³ ⁴ ₅ ① ⑩ 𝟘𝟙𝟚 𝐀𝐁𝐂",
]

SPACES = [
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\u00a0", "\u3000",
    "\u2009", "\u200b", "\u180e", "\u2028", "\u2029", "\u0085", "\ufeff", "\x0b", "\x0c",
    " \t \n", "\n \n", "    \n\n    ",
]


def added_token_strings(tokenizer_dir):
    """The added tokens' contents (read from tokenizer.json when at hand) plus near misses."""
    found = []
    path = os.path.join(tokenizer_dir, "tokenizer.json") if tokenizer_dir else None
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            found = [t["content"] for t in json.load(f).get("added_tokens", [])]
    if not found:  # DeepSeek-V3's, for --corpus-only without the file
        found = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>",
                 "<｜Assistant｜>", "<think>", "</think>", "<｜fim▁hole｜>", "<｜tool▁sep｜>"]
    # Near misses must stay plain text.
    near = ["<｜User", "｜User｜>", "<|User|>", "<｜user｜>", "<think", "<<think>>",
            "<｜begin▁of▁sentence｜", "<｜<｜User｜>｜>"]
    return found, near


def random_code_point(rng):
    while True:
        plane = rng.random()
        if plane < 0.6:
            cp = rng.randrange(0x20, 0x3000)
        elif plane < 0.9:
            cp = rng.randrange(0x3000, 0x10000)
        else:
            cp = rng.randrange(0x10000, 0x30000)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        return chr(cp)


def prose(rng, n_words):
    out = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if i == 0 or rng.random() < 0.08:
            w = w.capitalize()
        out.append(w)
        if rng.random() < 0.1:
            out[-1] += rng.choice([",", ".", ";", ":", "!", "?", "'s", ")", "\""])
    return " ".join(out)


def build_corpus(tokenizer_dir):
    rng = random.Random(SEED)
    specials, near = added_token_strings(tokenizer_dir)
    corpus = ["", " ", "a", "A", "0", "\n", "Hello world", "Hello, world!", " Hello", "hello  "]

    for n in range(1, 9):  # digit runs: the pre-tokenizer cuts them in threes
        corpus += [str(10 ** n - 1), "x" + "7" * n + "y", " " + "1" * n]
    corpus += ["1" * 200, "3.14159265358979323846", "1,234,567.89", "-42e-7", "0x7f 0b1010",
               "２０２６年１１月２４日", "٣٤٥ ۴۵۶ ४५६"]

    for _ in range(500):
        corpus.append(prose(rng, rng.randrange(1, 40)))
    for _ in range(250):
        a, b = rng.sample(CODE, 2)
        corpus.append(a if rng.random() < 0.5 else a + b)
    for _ in range(300):
        i = rng.randrange(len(CJK))
        corpus.append(CJK[i:i + rng.randrange(1, 40)])
    for _ in range(250):
        parts = [rng.choice(EMOJI) for _ in range(rng.randrange(1, 6))]
        glue = rng.choice(["", " ", "ok", "\n", "好"])
        corpus.append(glue.join(parts))
    for _ in range(300):
        pieces = [rng.choice(SCRIPTS)[: rng.randrange(3, 40)],
                  prose(rng, rng.randrange(1, 6)),
                  CJK[rng.randrange(len(CJK) - 10):][:6],
                  rng.choice(EMOJI)]
        rng.shuffle(pieces)
        corpus.append(rng.choice(["", " ", "\n"]).join(pieces))
    for _ in range(300):
        parts = []
        for _ in range(rng.randrange(1, 8)):
            parts.append(rng.choice(SPACES) * rng.randrange(1, 4))
            if rng.random() < 0.7:
                parts.append(rng.choice(WORDS + ["123", "!!", "...", "中文", "é"]))
        corpus.append("".join(parts))
    for _ in range(400):
        parts = []
        for _ in range(rng.randrange(1, 6)):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(specials))
            elif r < 0.5:
                parts.append(rng.choice(near))
            else:
                parts.append(prose(rng, rng.randrange(0, 5)))
            if rng.random() < 0.3:
                parts.append(rng.choice(SPACES))
        corpus.append("".join(parts))
    for _ in range(300):
        corpus.append("".join(random_code_point(rng) for _ in range(rng.randrange(1, 30))))
    for n in (300, 1000, 5000):  # very long words: the merge loop's worst case
        corpus.append("a" * n)
        corpus.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n)))
    corpus.append("Pneumonoultramicroscopicsilicovolcanoconiosis" * 20)
    corpus.append("中" * 2000)
    corpus.append("🙂" * 300)
    corpus.append(" " * 1000 + "x")
    corpus.append("\n" * 500)
    corpus.append(("The quick brown fox jumps over the lazy dog. " * 60).strip())
    return corpus


def special_processor(tokenizer, tokenizer_dir):
    """transformers' LlamaTokenizerFast post-processor, from tokenizer_config.json."""
    from tokenizers import processors
    path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if "add_bos_token" not in config and "add_eos_token" not in config:
        return None

    def content(key):
        v = config.get(key)
        return v["content"] if isinstance(v, dict) else v

    single, specials = [], []
    if config.get("add_bos_token"):
        bos = content("bos_token")
        single.append(bos)
        specials.append((bos, tokenizer.token_to_id(bos)))
    single.append("$A")
    if config.get("add_eos_token"):
        eos = content("eos_token")
        single.append(eos)
        specials.append((eos, tokenizer.token_to_id(eos)))
    return processors.TemplateProcessing(single=single, special_tokens=specials)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-dir", default=os.path.join(root, ".cache", "tokenizer"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "data", "tokenizer",
                                                  "golden.jsonl"))
    ap.add_argument("--corpus-only", metavar="PATH",
                    help="write the corpus alone ({\"text\": ...} lines) to PATH and stop")
    args = ap.parse_args()

    corpus = build_corpus(args.tokenizer_dir)
    if args.corpus_only:
        with open(args.corpus_only, "w", encoding="utf-8") as f:
            for text in corpus:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        print(f"wrote {len(corpus)} strings to {args.corpus_only}")
        return

    import tokenizers
    from tokenizers import Tokenizer
    path = os.path.join(args.tokenizer_dir, "tokenizer.json")
    plain = Tokenizer.from_file(path)
    with_specials = Tokenizer.from_file(path)
    processor = special_processor(with_specials, args.tokenizer_dir)
    if processor is not None:
        with_specials.post_processor = processor
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()

    lines = [json.dumps({"meta": {
        "tokenizers_version": tokenizers.__version__,
        "tokenizer_sha256": digest,
        "vocab_size": plain.get_vocab_size(with_added_tokens=True),
        "count": len(corpus),
        "seed": SEED,
    }})]
    for i, text in enumerate(corpus):
        ids = plain.encode(text, add_special_tokens=False).ids
        entry = {"text": text, "ids": ids}
        if i % SPECIAL_SUBSET_EVERY == 0:
            entry["ids_special"] = with_specials.encode(text, add_special_tokens=True).ids
        decoded = plain.decode(ids, skip_special_tokens=False)
        decoded_skip = plain.decode(ids, skip_special_tokens=True)
        if decoded != text:
            entry["decoded"] = decoded
        if decoded_skip != decoded:
            entry["decoded_skip"] = decoded_skip
        lines.append(json.dumps(entry, ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if len(data) > MAX_OUTPUT_BYTES:
        sys.exit(f"golden output is {len(data)} bytes, over the {MAX_OUTPUT_BYTES}-byte limit")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {len(corpus)} strings ({len(data)} bytes) to {args.out}")


if __name__ == "__main__":
    main()
