# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pins in the project's own files. After a rollback, a plain `docker compose up -d`, `pull`, `ps`
or `logs` in the project directory must run the rolled-back images, not what a moved tag names
now; and the next deploy must replace the pin by itself. So the digest goes where the reference
is defined (`repo:tag@sha256:...` is a valid reference: the engine pulls and runs the digest):

- `image: reg/app:${APP_TAG}`, APP_TAG set in an env file: `APP_TAG=v1@sha256:...` there; a
  deploy that sets a new tag replaces the pin;
- a tag written in a compose file, `image: reg/app:latest`: `image: reg/app:latest@sha256:...`
  on that line.

What cannot be pinned so (no `image:` line that gives the reference, a variable used for more
than that image, a variable set in the environment, an image without a registry digest) is
named with its reason; the ledger's pin file keeps those. Pure text work on the release's file
contents: no YAML library on managed hosts, no engine.
"""

from __future__ import annotations

import re

# One assignment of an env file as Compose reads it: KEY=value, optionally `export`ed, the value
# optionally quoted; an unquoted value ends at a ` #` comment.
_ENV_ASSIGNMENT = re.compile(r"""^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*(.*?)[ \t]*$""")

# The same line cut where a pin goes: what precedes the value, its quote, the value, what follows.
_ENV_VALUE = re.compile(
    r"""^(?P<lead>[ \t]*(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_.]*[ \t]*=[ \t]*)(?P<q>["']?)(?P<value>.*?)(?P=q)"""
    r"""(?P<tail>(?:[ \t]+#.*)?[ \t]*)$"""
)

# A block-style `image:` line of a compose file (a list item's too); image references hold no
# quote, space or '#'.
_IMAGE_LINE = re.compile(
    r"""^(?P<lead>[ \t]*(?:-[ \t]+)?image[ \t]*:[ \t]*)(?P<q>["']?)(?P<value>[^"'\s#]+)(?P=q)"""
    r"""(?P<tail>[ \t]*(?:#.*)?)$"""
)

# Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR.
_REFERENCE = re.compile(r"""\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))""")


def env_assignments(text):
    """The variables an env file sets (the last assignment of each wins)."""
    return {key: value for key, (value, _index) in _env_lines(text).items()}


def _env_lines(text):
    """{variable: (value, index of the line that sets it last)}."""
    values = {}
    for index, line in enumerate(text.splitlines()):
        match = _ENV_ASSIGNMENT.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        key, raw = match.groups()
        closing = raw.find(raw[0], 1) if raw[:1] in ("'", '"') else -1
        if closing > 0:  # a quoted value, maybe followed by a comment
            values[key] = (raw[1:closing], index)
        else:
            values[key] = (re.split(r"[ \t]+#", raw, maxsplit=1)[0], index)
    return values


def interpolate(raw, variables):
    """`raw` as Compose interpolates it with `variables`; None for a form this does not read (a
    nested default, `${VAR:+...}`): a reference that cannot be read is never pinned."""
    out, position = [], 0
    for match in _REFERENCE.finditer(raw):
        literal = raw[position : match.start()]
        if "$" in literal:
            return None
        out.append(literal)
        position = match.end()
        escaped, braced, operator, default, bare = match.groups()
        if escaped:
            out.append("$")
            continue
        if default and "$" in default:
            return None
        value = variables.get(braced or bare)
        if (operator == ":-" and not value) or (operator == "-" and value is None):
            value = default
        out.append(value or "")
    if "$" in raw[position:]:
        return None
    out.append(raw[position:])
    return "".join(out)


def trailing_variable(raw):
    """The variable a reference ends with (`reg/app:${APP_TAG}` -> APP_TAG), else None."""
    match = re.search(r"""\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?])[^}$]*)?\}|([A-Za-z_][A-Za-z0-9_]*))$""", raw)
    if not match or raw[: match.start()].endswith("$"):
        return None
    return match.group(1) or match.group(2)


def _references(text, name):
    return len(re.findall(r"(?<!\$)\$\{?%s(?![A-Za-z0-9_])" % re.escape(name), text))


class PinPlan:
    """What pinning a release's images in its own files gives.

    `contents`: the release's file contents with the pins in; `pins`: [{services, file, line, how}];
    `not_pinned`: [{service, why}], the services the ledger's pin file must hold.
    """

    def __init__(self, contents, pins, not_pinned):
        self.contents = contents
        self.pins = pins
        self.not_pinned = not_pinned

    def pinned_paths(self, original):
        """The paths whose content the pins changed."""
        return sorted(path for path, data in self.contents.items() if original.get(path) != data)


def plan_pins(release, contents, environ=None, keep=()):
    """Pin each service of `release` by its registry digest where its image reference is defined.

    `contents` are the release's file contents (bytes by path); `environ` the environment Compose
    interpolates with over the env files; `keep` the services left as they are (their running
    container already runs the recorded image by the release's own reference: pinning would only
    recreate it). A service whose reference already holds a digest needs no pin.
    """
    environ = environ or {}
    files = release.get("files") or []
    texts = {e["path"]: contents[e["path"]].decode("utf-8", "surrogateescape") for e in files if e["path"] in contents}
    compose_paths = [e["path"] for e in files if e["kind"] == "compose" and e["path"] in texts]
    variables, defined_in = {}, {}
    for entry in files:
        if entry["kind"] == "env" and entry["path"] in texts:
            for key, (value, index) in _env_lines(texts[entry["path"]]).items():
                variables[key], defined_in[key] = value, (entry["path"], index)
    variables.update(environ)
    lines = {path: texts[path].splitlines(keepends=True) for path in set(texts)}
    image_lines = []  # (path, index, match, interpolated value)
    for path in compose_paths:
        for index, line in enumerate(lines[path]):
            match = _IMAGE_LINE.match(line.rstrip("\r\n"))
            if match:
                image_lines.append((path, index, match, interpolate(match.group("value"), variables)))

    services = release.get("services") or {}
    wanted, not_pinned = {}, []
    for name, svc in sorted(services.items()):
        if name in keep:
            continue
        # A release recorded while its files held a pin names the image with its digest.
        base, _sep, written = (svc.get("image") or "").partition("@")
        digest = (svc.get("repo_digest") or "").partition("@")[2] or written
        if not digest:
            not_pinned.append({"service": name, "why": "its image has no registry digest (built on the host)"})
            continue
        wanted.setdefault(base, []).append((name, digest))

    edits, pins = {}, []
    for base, group in sorted(wanted.items()):
        names = sorted(name for name, _digest in group)
        digests = sorted({digest for _name, digest in group})
        values = {base, "%s@%s" % (base, digests[0])}  # as the files give it, unpinned or pinned already
        others = [
            (s.get("repo_digest") or s.get("image") or "").partition("@")[2]
            for n, s in services.items()
            if (s.get("image") or "").partition("@")[0] == base and n not in names
        ]
        here = [(path, index, match, value != base) for path, index, match, value in image_lines if value in values]
        planned, group_pins = {}, []
        if len(digests) > 1 or any(digest != digests[0] for digest in others):
            why = "services with the reference %s ran different images" % base
        elif not here:
            why = "no image: line of the compose files gives %s (an anchor, a flow mapping, a form not read)" % base
        else:
            why, planned, group_pins = _pin_group(
                values, digests[0], here, lines, texts, compose_paths, image_lines, defined_in, environ
            )
        if why:
            not_pinned.extend({"service": name, "why": why} for name in names)
            continue
        edits.update(planned)
        pins.extend(dict(pin, services=names) for pin in group_pins)

    pinned = dict(contents)
    for path in sorted({path for path, _index in edits}):
        text = "".join(edits.get((path, i), line) for i, line in enumerate(lines[path]))
        pinned[path] = text.encode("utf-8", "surrogateescape")
    return PinPlan(pinned, pins, sorted(not_pinned, key=lambda n: n["service"]))


def _pin_group(values, digest, here, lines, texts, compose_paths, image_lines, defined_in, environ):
    """(why not, {(path, index): pinned line}, [{file, line, how}]) for the lines that give the
    image (`values`: its reference unpinned, and pinned); a line pinned already needs no edit."""
    planned, group_pins = {}, []
    for path, index, match, pinned_already in here:
        variable = trailing_variable(match.group("value"))
        if variable is None:
            target, pattern, how = (path, index), _IMAGE_LINE, "image"
        else:
            why = _variable_refusal(variable, values, texts, compose_paths, image_lines, defined_in, environ)
            if why:
                return why, {}, []
            target, pattern, how = defined_in[variable], _ENV_VALUE, variable
        if not pinned_already:
            line = _pinned_line(lines[target[0]][target[1]], pattern, digest)
            if line is None:
                return "line %d of %s does not read as expected" % (target[1] + 1, target[0]), {}, []
            planned[target] = line
        pin = {"file": target[0], "line": target[1] + 1, "how": how}
        if pin not in group_pins:
            group_pins.append(pin)
    return None, planned, group_pins


def _variable_refusal(variable, values, texts, compose_paths, image_lines, defined_in, environ):
    """Why pinning `variable`'s value would not pin exactly the image (`values`: its reference), else None."""
    if variable in environ:
        return "%s is set in the environment, over the env files" % variable
    if variable not in defined_in:
        return "%s is not set in an env file of the project" % variable
    used = sum(_references(texts[path], variable) for path in compose_paths)
    here = sum(
        1
        for _path, _index, match, value in image_lines
        if value in values and trailing_variable(match.group("value")) == variable
    )
    if used != here:
        return "%s is used for more than this image's tag: pinning it would change that too" % variable
    return None


def _pinned_line(line, pattern, digest):
    """The line with '@<digest>' appended to its value, its quotes, comment and line end kept; None
    when it does not read as expected."""
    body = line.rstrip("\r\n")
    match = pattern.match(body)
    if not match or not match.group("value"):
        return None
    value = match.group("value") + "@" + digest
    return match.group("lead") + match.group("q") + value + match.group("q") + match.group("tail") + line[len(body) :]
