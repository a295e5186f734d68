"""The project's OCI images (`scripts/image`): `build.py` builds and checks them; the package lists and the
lock beside it say what goes in."""
