# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Find a site's reverse_proxy in a Caddyfile and change only its upstream tokens.

The lexer follows Caddy's own rules (whitespace separates tokens, newlines end a line,
"..." and `...` quote, # starts a comment only at the start of a token, { and } are
structure only when they stand alone, <<MARKER opens a heredoc) and keeps every token's
character span, so an edit is a splice of the original text: comments, formatting,
snippets, imports and other sites stay byte for byte.
"""

from __future__ import annotations

import re


class CaddyfileError(Exception):
    """The Caddyfile cannot be read as asked; the message names the place and what to do."""


class Token:
    __slots__ = ("end", "end_line", "line", "quoted", "start", "text")

    def __init__(self, text, start, end, line, end_line, quoted):
        self.text = text
        self.start = start
        self.end = end
        self.line = line
        self.end_line = end_line
        self.quoted = quoted

    def is_open(self):
        return not self.quoted and self.text == "{"

    def is_close(self):
        return not self.quoted and self.text == "}"

    def __repr__(self):
        return "Token(%r, line %d)" % (self.text, self.line)


def tokenize(text):
    """Return the tokens of a Caddyfile; raise CaddyfileError on an unterminated quote."""
    tokens = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch in " \t\r":
            i += 1
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start, start_line = i, line
        if ch in '"`':
            value, i, line = _quoted(text, i, line)
            tokens.append(Token(value, start, i, start_line, line, True))
            continue
        if text.startswith("<<", i):
            heredoc = _heredoc(text, i, line)
            if heredoc is not None:
                value, i, line = heredoc
                tokens.append(Token(value, start, i, start_line, line, True))
                continue
        chars = []
        while i < n and text[i] not in " \t\r\n":
            if text[i] == "\\" and i + 1 < n and text[i + 1] not in "\r\n":
                chars.append(text[i + 1])
                i += 2
                continue
            chars.append(text[i])
            i += 1
        tokens.append(Token("".join(chars), start, i, start_line, line, False))
    return tokens


def _quoted(text, i, line):
    quote, start_line = text[i], line
    i += 1
    chars = []
    while i < len(text):
        ch = text[i]
        if quote == '"' and ch == "\\" and i + 1 < len(text) and text[i + 1] == '"':
            chars.append('"')
            i += 2
            continue
        if ch == quote:
            return "".join(chars), i + 1, line
        if ch == "\n":
            line += 1
        chars.append(ch)
        i += 1
    raise CaddyfileError("unterminated %s quote that opens on line %d" % (quote, start_line))


_HEREDOC_MARKER = re.compile(r"<<([A-Za-z0-9_-]+)[ \t]*\r?\n")


def _heredoc(text, i, line):
    match = _HEREDOC_MARKER.match(text, i)
    if not match:
        return None
    marker, start_line = match.group(1), line
    close = re.compile(r"^[ \t]*%s(?=[ \t\r\n]|$)" % re.escape(marker), re.MULTILINE)
    found = close.search(text, match.end())
    if not found:
        raise CaddyfileError("heredoc <<%s that opens on line %d has no closing %s" % (marker, start_line, marker))
    body = text[match.end() : found.start()]
    end = found.end()
    return body, end, line + text.count("\n", i, end)


class Directive:
    """One line of a block: its name, its arguments and, when it opens one, its block."""

    def __init__(self, tokens, children=None, parent=None):
        self.tokens = tokens
        self.children = children
        self.parent = parent

    @property
    def name(self):
        return self.tokens[0].text

    @property
    def args(self):
        return [t for t in self.tokens[1:] if not t.is_open()]

    @property
    def line(self):
        return self.tokens[0].line

    def header(self):
        return " ".join(t.text for t in self.tokens if not t.is_open())


class Block:
    """A top-level block: the global options, a snippet, or a site with its addresses."""

    def __init__(self, kind, keys, directives):
        self.kind = kind
        self.keys = keys
        self.directives = directives

    @property
    def addresses(self):
        out = []
        for key in self.keys:
            out.extend(part for part in key.text.split(",") if part)
        return out

    @property
    def line(self):
        return self.keys[0].line if self.keys else 1


def _lines(tokens):
    """Group tokens into logical lines (a quoted token may span physical lines)."""
    lines, current, last_line = [], [], None
    for token in tokens:
        if current and token.line != last_line:
            lines.append(current)
            current = []
        current.append(token)
        last_line = token.end_line
    if current:
        lines.append(current)
    return lines


def parse(text):
    """Return the list of top-level Blocks of a Caddyfile."""
    lines = _lines(tokenize(text))
    pos = 0
    blocks = []

    def body(parent, opened_at):
        nonlocal pos
        directives = []
        while pos < len(lines):
            line = lines[pos]
            pos += 1
            if line[0].is_close():
                if len(line) > 1:
                    raise CaddyfileError("unexpected %r after } on line %d" % (line[1].text, line[1].line))
                return directives
            directive = Directive(line, parent=parent)
            if line[-1].is_open():
                directive.children = body(directive, line[-1].line)
            elif any(t.is_open() for t in line):
                raise CaddyfileError("'{' must end the line (line %d)" % line[0].line)
            directives.append(directive)
        if opened_at is not None:
            raise CaddyfileError("the block opened on line %d is never closed: a '}' is missing" % opened_at)
        return directives

    while pos < len(lines):
        line = lines[pos]
        pos += 1
        if len(line) == 1 and line[0].is_open():
            if blocks:
                raise CaddyfileError(
                    "a block without addresses on line %d: only the first block may be the global options"
                    % line[0].line
                )
            blocks.append(Block("global", [], body(None, line[0].line)))
            continue
        if line[0].is_close():
            raise CaddyfileError("unexpected '}' on line %d: no block is open" % line[0].line)
        keys = list(line)
        while not keys[-1].is_open() and keys[-1].text.endswith(",") and pos < len(lines):
            keys.extend(lines[pos])
            pos += 1
        if keys[-1].is_open():
            keys = keys[:-1]
            kind = "snippet" if keys and _is_snippet_key(keys[0].text) else "site"
            if keys and keys[0].text == "import" and len(keys) >= 2:
                raise CaddyfileError("'import' on line %d cannot open a block" % keys[0].line)
            blocks.append(Block(kind, keys, body(None, line[-1].line)))
        elif keys[0].text == "import":
            blocks.append(Block("import", keys, []))
        elif not [b for b in blocks if b.kind == "site"]:
            # A file with a single site may leave out the braces: the rest is its body.
            blocks.append(Block("site", keys, body(None, None)))
        else:
            raise CaddyfileError(
                "line %d (%s) is outside any block; with several sites, each needs { }" % (keys[0].line, keys[0].text)
            )
    return blocks


def _is_snippet_key(text):
    return (text.startswith("(") and text.endswith(")")) or text.startswith("&(")


_MATCHER = re.compile(r"^(/|@|\*$)")


class ProxyCandidate:
    """A reverse_proxy directive inside the chosen site, with where its upstreams are written."""

    def __init__(self, directive):
        self.directive = directive
        args = directive.args
        self.matcher = args[0].text if args and _MATCHER.match(args[0].text) and not args[0].quoted else None
        self.line_upstreams = args[1:] if self.matcher else args
        self.to_lines = [c for c in (directive.children or []) if c.name == "to"]

    def context(self):
        chain, node = [], self.directive.parent
        while node is not None:
            chain.append(node.header())
            node = node.parent
        return list(reversed(chain))

    def describe(self):
        where = " > ".join([*self.context(), self.directive.header()])
        return "line %d: %s" % (self.directive.line, where)

    def selectors(self):
        out = set()
        if self.matcher:
            out.add(self.matcher)
        node = self.directive.parent
        while node is not None:
            out.add(node.header())
            if node.args:
                out.add(" ".join(a.text for a in node.args))
                out.add(node.args[0].text)
            node = node.parent
        return out

    def upstreams(self):
        out = [t.text for t in self.line_upstreams]
        for to in self.to_lines:
            out.extend(t.text for t in to.args)
        return out


def _walk(directives):
    for directive in directives:
        yield directive
        if directive.children:
            yield from _walk(directive.children)


def find_site(blocks, site):
    sites = [b for b in blocks if b.kind == "site"]
    for block in sites:
        if site in block.addresses:
            return block
    known = ", ".join(",".join(b.addresses) for b in sites) or "none"
    raise CaddyfileError(
        "site %r is not in the Caddyfile; its sites are: %s. Set site to one of them, as written." % (site, known)
    )


def find_proxy(blocks, site, match=None):
    """Return the one ProxyCandidate of site (narrowed by match); errors list the candidates."""
    block = find_site(blocks, site)
    candidates = [ProxyCandidate(d) for d in _walk(block.directives) if d.name == "reverse_proxy"]
    if not candidates:
        imports = [d.header() for d in _walk(block.directives) if d.name in ("import", "invoke")]
        hint = ""
        if imports:
            hint = " It imports %s: the reverse_proxy must be written in the site itself to be switched." % ", ".join(
                imports
            )
        raise CaddyfileError("site %r (line %d) has no reverse_proxy directive.%s" % (site, block.line, hint))
    listing = "; ".join(c.describe() for c in candidates)
    if match:
        chosen = [c for c in candidates if match in c.selectors()]
        if not chosen:
            raise CaddyfileError(
                "no reverse_proxy of site %r matches %r; the candidates are: %s" % (site, match, listing)
            )
    else:
        chosen = candidates
    if len(chosen) > 1:
        raise CaddyfileError(
            "site %r has %d reverse_proxy directives%s; set match to the path matcher or handle block of the one "
            "to switch. Candidates: %s"
            % (site, len(chosen), " matching %r" % match if match else "", "; ".join(c.describe() for c in chosen))
        )
    candidate = chosen[0]
    if not candidate.upstreams():
        raise CaddyfileError(
            "the reverse_proxy on %s has no static upstreams (dynamic upstreams cannot be switched by editing the file)"
            % candidate.describe()
        )
    return candidate


_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?)$")


def check_upstream(value):
    """Raise CaddyfileError unless value is host:port (port 1-65535)."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or not _HOST.match(host):
        raise CaddyfileError("upstream %r is not host:port (for example app-green:8000 or 127.0.0.1:8081)" % text)
    return text


def _line_span(text, directive):
    """The span of a whole directive line, its indentation and newline included."""
    start = text.rfind("\n", 0, directive.tokens[0].start) + 1
    end = text.find("\n", directive.tokens[-1].end)
    return start, len(text) if end < 0 else end + 1


def replace_upstreams(text, site, upstreams, match=None):
    """Return (new_text, previous_upstreams, candidate) with only the upstream tokens changed."""
    wanted = [check_upstream(u) for u in upstreams]
    if not wanted:
        raise CaddyfileError("upstreams is empty: give at least one host:port")
    candidate = find_proxy(parse(text), site, match)
    previous = candidate.upstreams()
    if previous == wanted:
        return text, previous, candidate
    rendered = " ".join(wanted)
    edits = []  # (start, end, replacement), applied from the end
    if candidate.line_upstreams:
        edits.append((candidate.line_upstreams[0].start, candidate.line_upstreams[-1].end, rendered))
        removed_to = candidate.to_lines
    else:
        first = candidate.to_lines[0]
        if first.args:
            edits.append((first.args[0].start, first.args[-1].end, rendered))
        else:
            edits.append((first.tokens[0].end, first.tokens[0].end, " " + rendered))
        removed_to = candidate.to_lines[1:]
    for to in removed_to:
        start, end = _line_span(text, to)
        edits.append((start, end, ""))
    out = text
    for start, end, replacement in sorted(edits, reverse=True):
        out = out[:start] + replacement + out[end:]
    return out, previous, candidate


def proxy_dials(config):
    """The dial addresses of every reverse_proxy handler in a Caddy JSON config, in order."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("handler") == "reverse_proxy":
                found.append([u.get("dial") for u in node.get("upstreams") or []])
            for key in sorted(node):
                walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    return found
