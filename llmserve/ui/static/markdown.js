// A small, safe markdown renderer for chat answers.
//
// Safety comes from the order of work: the whole source is HTML-escaped first, so every tag the
// output holds was written by this file. Links keep only http(s) and mailto targets. Supported:
// fenced code blocks (also while still open during streaming), inline code, headings, bold, italic,
// strikethrough, bullet and numbered lists, block quotes, horizontal rules and links.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const SAFE_URL = /^(https?:\/\/|mailto:)/i;
const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** Render markdown `source` as an HTML string that is safe to assign to innerHTML. */
export function renderMarkdown(source) {
  const lines = escapeHtml(String(source).replace(/\0/g, "")).split(/\r?\n/);
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      i = codeBlock(lines, i, fence, out);
    } else if (/^\s*$/.test(line)) {
      i += 1;
    } else if (/^ {0,3}#{1,6}\s/.test(line)) {
      const level = line.trim().match(/^#+/)[0].length;
      out.push(`<h${level}>${inline(line.trim().slice(level).trim())}</h${level}>`);
      i += 1;
    } else if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
    } else if (/^ {0,3}&gt;/.test(line)) {
      i = blockQuote(lines, i, out);
    } else if (listItem(line)) {
      i = list(lines, i, out);
    } else {
      i = paragraph(lines, i, out);
    }
  }
  return out.join("\n");
}

function codeBlock(lines, start, fence, out) {
  const marker = fence[1];
  const lang = fence[2].replace(/[^\w+#.-]/g, "");
  const body = [];
  let i = start + 1;
  while (i < lines.length && !lines[i].trim().startsWith(marker)) {
    body.push(lines[i]);
    i += 1;
  }
  const label = lang ? `<span>${lang}</span>` : "<span>code</span>";
  const cls = lang ? ` class="language-${lang}"` : "";
  out.push(`<div class="code-block"><div class="code-head">${label}` +
    `<button type="button" class="copy-code">Copy</button></div>` +
    `<pre><code${cls}>${body.join("\n")}</code></pre></div>`);
  return i + 1; // past the closing fence, or past the end while a fence is still streaming in
}

function blockQuote(lines, start, out) {
  const body = [];
  let i = start;
  while (i < lines.length && /^ {0,3}&gt;/.test(lines[i])) {
    body.push(lines[i].replace(/^ {0,3}&gt; ?/, ""));
    i += 1;
  }
  out.push(`<blockquote>${body.map(inline).join("<br>")}</blockquote>`);
  return i;
}

function listItem(line) {
  const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
  if (bullet) return { ordered: false, text: bullet[1] };
  const numbered = line.match(/^\s*(\d{1,9})[.)]\s+(.*)$/);
  if (numbered) return { ordered: true, start: Number(numbered[1]), text: numbered[2] };
  return null;
}

function list(lines, start, out) {
  const first = listItem(lines[start]);
  const items = [];
  let i = start;
  while (i < lines.length) {
    const item = listItem(lines[i]);
    if (item && item.ordered === first.ordered) {
      items.push(item.text);
    } else if (item || /^\s*$/.test(lines[i]) || !/^\s{2,}/.test(lines[i])) {
      break;
    } else {
      items[items.length - 1] += `<br>${lines[i].trim()}`; // an indented continuation line
    }
    i += 1;
  }
  const tag = first.ordered ? "ol" : "ul";
  const startAttr = first.ordered && first.start !== 1 ? ` start="${first.start}"` : "";
  out.push(`<${tag}${startAttr}>${items.map((t) => `<li>${inline(t)}</li>`).join("")}</${tag}>`);
  return i;
}

function paragraph(lines, start, out) {
  const body = [];
  let i = start;
  while (i < lines.length && !/^\s*$/.test(lines[i]) && !startsBlock(lines[i])) {
    body.push(lines[i].trim());
    i += 1;
  }
  out.push(`<p>${body.map(inline).join("<br>")}</p>`);
  return i;
}

function startsBlock(line) {
  return FENCE.test(line) || RULE.test(line) || /^ {0,3}#{1,6}\s/.test(line) || /^ {0,3}&gt;/.test(line) || listItem(line) !== null;
}

/** Inline spans of one escaped line: code first (its content stays literal), then links and emphasis. */
function inline(text) {
  const held = [];
  const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
  let s = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, code) => hold(`<code>${code.trim()}</code>`));
  s = s.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (whole, label, url) =>
    SAFE_URL.test(url)
      ? hold(`<a href="${url}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`)
      : whole);
  s = emphasis(s);
  for (let depth = 0; depth < 3 && s.includes("\u0000"); depth += 1) { // links may hold code spans
    s = s.replace(/\u0000(\d+)\u0000/g, (_, n) => held[Number(n)]);
  }
  return s;
}

function emphasis(text) {
  return text
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
    .replace(/\*(?=[^\s*])([^*]*?[^\s*])\*/g, "<em>$1</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_]|[^\s_])_(?!\w)/g, "$1<em>$2</em>");
}
