"""scikit-learn API surface shared by the five estimators, and what importing the package costs."""

import subprocess
import sys

import pytest


def _modules_after(code):
    """Sorted names of the heavy optional modules in ``sys.modules`` after running ``code``
    in a fresh interpreter."""
    probe = (
        f"{code}\n"
        "import sys\n"
        "heavy = ('torchvision', 'faiss', 'matplotlib', 'PIL', 'torch', 'sklearn')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=300, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_import_skdeepcluster_loads_nothing_heavy():
    assert _modules_after("import skdeepcluster") == "[]"


def test_public_names_load_without_torchvision_faiss_matplotlib_or_pillow():
    # every public name, estimators and displays included: torch and sklearn only; torchvision,
    # faiss, matplotlib and Pillow are imported by the functions that first use them
    loaded = _modules_after(
        "import skdeepcluster\n"
        "for name in skdeepcluster.__all__:\n"
        "    getattr(skdeepcluster, name)\n"
        "import skdeepcluster.cli, skdeepcluster.kmeans, skdeepcluster.nn.augment"
    )
    assert loaded == "['sklearn', 'torch']"


def test_lazy_names_are_the_submodules_objects():
    import skdeepcluster
    from skdeepcluster.methods.temi import TEMIClusterer

    assert skdeepcluster.TEMIClusterer is TEMIClusterer
    assert set(skdeepcluster.__all__) <= set(dir(skdeepcluster))
    assert sorted(skdeepcluster.__all__) == sorted(skdeepcluster._EXPORTS)
    with pytest.raises(AttributeError, match="no_such_name"):
        skdeepcluster.no_such_name  # noqa: B018
