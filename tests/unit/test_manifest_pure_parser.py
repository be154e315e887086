"""The pure-Python YAML parser (no libyaml, or IPVLAN_RECONCILER_PURE_YAML=1 as in the test VM)
must report every broken manifest exactly like the C parser does: never an internal error."""
import contextlib
import glob
import io
import os

import pytest

from reconciler.cli import main
from reconciler.manifest import yamlload

BAD = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "bad", "*.yaml")))


def run(path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["validate", path])
    return rc, err.getvalue()


@pytest.mark.parametrize("path", BAD, ids=[os.path.basename(p) for p in BAD])
def test_pure_parser_reports_like_the_c_parser(path, monkeypatch):
    c_rc, c_err = run(path)
    monkeypatch.setattr(yamlload, "_CParser", None)
    rc, err = run(path)
    assert rc == 1 and "internal error" not in err, err
    assert c_rc == 1
    # the same positions (syntax error wording differs between libyaml and ruamel's parser)
    where = lambda text: sorted(l.split(": ", 1)[0] for l in text.splitlines() if l.startswith(path))
    assert where(err) == where(c_err) and where(err)
