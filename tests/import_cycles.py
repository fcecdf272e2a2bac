#!/usr/bin/env python3
"""Fails when two or more files of the crate import each other in a circle (issue 16).

Receives a crate's source folder (default: src); prints one line per circle, naming its files in
order and what each one imports from the next, and exits 1; prints nothing and exits 0 when there
is none. An edge is a `crate::...` or `super::...` path outside comments, `use` groups included
(`crate::{a::X, b::Y}`, over several lines too). A parent's plain `mod child;` and `child::X`
are not edges: a module declaring its children is the layering, not a circle. Test modules are left
out: everything from a file's first `#[cfg(test)]` on (tests sit at the end of each file here).
Needs only the standard library, so tests/run.sh runs it before building anything.
"""
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
START = re.compile(rf"\b(crate|super)(?=\s*::)((?:\s*::\s*{IDENT})*)(\s*::\s*\{{)?")


def modules(src):
    """Module path (a tuple of names) -> file, for every .rs file under src."""
    found = {}
    for root, _, files in os.walk(src):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, src)[:-3].split(os.sep)
                if parts[-1] in ("mod", "lib", "main"):
                    parts = parts[:-1]
                found[tuple(parts)] = path
    return found


def group_paths(text, start):
    """The paths inside the `{...}` group that opens before `start`, and the group's end."""
    depth, item, items, i = 1, "", [], start
    while depth and i < len(text):
        c = text[i]
        depth += (c == "{") - (c == "}")
        if depth == 1 and c == ",":
            items.append(item)
            item = ""
        elif depth:
            item += c
        i += 1
    items.append(item)
    paths = []
    for item in items:
        head, _, rest = item.partition("{")
        head = [p for p in re.findall(IDENT, head.split(" as ")[0]) if p != "self"]
        if rest:
            paths += [head + sub for sub in group_paths(item, item.index("{") + 1)[0]]
        elif head or item.strip() == "self":
            paths.append(head)
    return paths, i


def references(text):
    """(crate|super, path) for every crate-relative path the text names."""
    text = "\n".join(l for l in text.split("#[cfg(test)]")[0].splitlines() if not l.lstrip().startswith("//"))
    for hit in START.finditer(text):
        head = re.findall(IDENT, hit.group(2))
        if hit.group(3):
            for tail in group_paths(text, hit.end())[0]:
                yield hit.group(1), head + tail
        else:
            yield hit.group(1), head


def graph(src):
    mods = modules(src)
    edges = {m: {} for m in mods}  # module -> {module it imports: the path that imports it}
    for m, path in mods.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for root, parts in references(text):
            # `super` in `a/b.rs` and in `a/b/mod.rs` both mean `a`; each further `super` goes up.
            base = list(m[:-1]) if root == "super" else []
            while parts and parts[0] == "super":
                base, parts = base[:-1], parts[1:]
            full = base + parts
            for k in range(len(full), 0, -1):
                target = tuple(full[:k])
                if target in mods:
                    if target != m:
                        edges[m].setdefault(target, "crate::" + "::".join(full))
                    break
    return mods, edges


def circles(edges):
    """The strongly connected components of more than one module (Tarjan): (a cycle, all)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append((cycle(edges, comp), comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def cycle(edges, comp):
    """A shortest cycle through the component's first module (breadth-first), as a list."""
    first = min(comp)
    parent, queue = {first: None}, [first]
    for v in queue:
        for w in sorted(edges[v]):
            if w == first:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1]
            if w in comp and w not in parent:
                parent[w] = v
                queue.append(w)
    return sorted(comp)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    mods, edges = graph(src)
    found = circles(edges)
    for loop, comp in found:
        steps = [f"{mods[a]} ({edges[a][b]})" for a, b in zip(loop, loop[1:] + loop[:1])]
        others = sorted(mods[m] for m in comp - set(loop))
        also = f" (also in this circle: {', '.join(others)})" if others else ""
        print(
            f"import_cycles: import circle: {' -> '.join(steps)} -> {mods[loop[0]]}{also}: "
            "move what they share into a module that imports none of them",
            file=sys.stderr,
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
