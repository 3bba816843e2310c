// tokenizer_corpus.js — the texts gkd's GPT-2 tokenizer is compared on, and their ids as
// encoded by the npm package gpt-3-encoder (OpenAI's encoder.py ported to JavaScript),
// an implementation independent of ours.
//
//   node tests/tokenizer_corpus.js PACKAGE_DIR fixture > tests/fixtures/gpt2_tokenizer/cases.jsonl
//       a few hundred strings: the handmade ones and paragraphs of prose
//   node tests/tokenizer_corpus.js PACKAGE_DIR corpus OUT_DIR
//       every text of the corpus as OUT_DIR/NNN.txt with its ids in OUT_DIR/NNN.json,
//       including each whole license text (a few hundred kB of English prose)
//
// The prose is Debian's /usr/share/common-licenses, present on every Debian machine.
// Two code points are left out on purpose: U+0085 and U+FEFF, where JavaScript's \s and
// Unicode's White_Space (which GPT-2's Python regex uses) disagree.
const fs = require('fs');
const path = require('path');
const [pkg, mode, outDir] = process.argv.slice(2);
const encoder = require(path.resolve(pkg, 'Encoder.js'));

const handmade = [
  // ASCII words, spaces, tabs, newlines
  'Hello world', 'Hello  world', 'Hello   world', '  leading spaces', 'trailing spaces   ', ' ', '  ', '\n',
  '\n\n', 'a\nb', 'a\n\nb', 'a \n b', 'tabs\tand\ttabs', 'mixed \t\n whitespace \t\n', 'multiple\n\n\nnewlines\n',
  '\r\nwindows\r\nline endings\r\n', 'end with space ', 'x', 'a b c d e f g', 'UPPER lower MiXeD',
  // contractions
  "I'm", "you're", "they've", "he'll", "she'd", "it's", "don't", "DON'T", "I'M HERE", "rock 'n' roll",
  "'s'", "''", "'tis", "y'all'll", "it''s", "the dog's bone", "dogs' bones", " 's", "'S", "can't won't shan't",
  "'re'  've 'm 'll 'd", "O'Neill's", "quote: 'hello'",
  // digits and numbers
  '1234567890', '3.14159', '1,000,000', '$100.00', '2024-11-25', '12:30:45', '-42', '+7', '1e-10', '0x1F',
  'version 1.2.3', 'abc123def', 'a1b2c3', '１２３ fullwidth', '١٢٣ arabic-indic', '½ ¾ ²', 'Ⅻ roman', '٣ and 3',
  '99 bottles', '100%', '#1', '007',
  // Latin with diacritics, other scripts
  'café naïve résumé', 'Ελληνικά κείμενα', 'Русский текст', '中文字符测试', '日本語のテキスト', '한국어 텍스트',
  'עברית', 'العربية', 'हिन्दी भाषा', 'ไทย', 'Ω≈ç√∫', 'e\u0301 combining', 'Straße', 'ǅ titlecase', 'ﬁ ligature',
  'Ærøskøbing', 'İstanbul', 'Ελλάδα2024', 'Zürich, München & Köln',
  // emoji and symbols
  '😀😃😄', 'smile 😀', '👍🏽', '👨‍👩‍👧‍👦 family', '🇫🇷🇩🇪', 'I ❤️ NY', '★☆✓✗', '→ ← ↑ ↓', '∑ ∏ ∫ ∂', '€£¥₹',
  '©®™', '♠♣♥♦', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢', '𝟘𝟙𝟚', 'x²+y²=z²', 'H₂O',
  // unusual spaces and controls
  'a\u00a0b nbsp', '\u00a0\u00a0two', 'em\u2003space', 'ideographic\u3000space', 'a\u2028b', 'zero\u200bwidth',
  '\x00\x01\x7f controls', '\x0b\x0c vertical', 'word\u00a0 \u00a0word',
  // punctuation, code, markup
  '!!!???...', '--- ===', '“quotes” ‘single’ «guillemets»', '—em—dash–en–', '(parens) [brackets] {braces}',
  'def f(x):\n    return x**2\n', 'for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}', '#include <stdio.h>',
  'https://example.com/path?q=1&r=2#frag', 'user@example.com', '<div class="x">text</div>', '{"key": [1, 2, 3]}',
  'C:\\Users\\name', '$ echo "hi" | wc -c', '// comment\n/* block */', '```python\nprint(1)\n```',
  '<|endoftext|>', 'a<|endoftext|>b', '<|endoftext', '|>', '\ufffd replacement',
];

function prose() {
  const dir = '/usr/share/common-licenses';
  const files = fs.readdirSync(dir).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort();
  const texts = files.map((f) => fs.readFileSync(path.join(dir, f), 'utf-8')
                                    .replace(/[\u0085\ufeff]/g, ''));
  return {files, texts};
}

const {files, texts} = prose();
if (mode === 'fixture') {
  // every 7th paragraph of each license, up to 400 characters each
  const paragraphs = [];
  for (const t of texts) {
    const ps = t.split(/\n\s*\n/);
    for (let i = 0; i < ps.length; i += 7) paragraphs.push(ps[i].slice(0, 400));
  }
  for (const text of handmade.concat(paragraphs))
    console.log(JSON.stringify({text, ids: encoder.encode(text)}));
} else if (mode === 'corpus') {
  fs.mkdirSync(outDir, {recursive: true});
  const all = handmade.concat(texts);
  all.forEach((text, i) => {
    const name = String(i).padStart(3, '0');
    fs.writeFileSync(path.join(outDir, name + '.txt'), text);
    fs.writeFileSync(path.join(outDir, name + '.json'), JSON.stringify(encoder.encode(text)));
  });
  const bytes = all.reduce((n, t) => n + Buffer.byteLength(t), 0);
  console.error(`wrote ${all.length} texts (${(bytes / 1024).toFixed(0)} kB, ${files.length} license files) to ${outDir}`);
} else {
  console.error('usage: node tests/tokenizer_corpus.js PACKAGE_DIR fixture|corpus [OUT_DIR]');
  process.exit(1);
}
