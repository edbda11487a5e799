"""The foundation every coact package stands on: error root, registry helper, atomic writes, permutation check,
bit-packing of active sets and the progress-callback type.

Why a package of its own: the import rule (docs/ARCHITECTURE.md) says `solvers/` and `runtime/` never import
`coact/` nor each other, yet all three need one error root (so the CLI can tell a user error from a bug), one
registry helper, one atomic-write helper and one permutation check. They live here, below all three. `common/`
imports only the standard library and numpy, never another coact package.
"""
