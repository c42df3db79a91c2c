"""
==========================================
Clustering a folder of images
==========================================

The ``skdeepcluster cluster`` command clusters every image of a folder. Here we write 200 digits
as PNG files (plus a broken file and a text file, which are skipped), run the command from Python
and show two of its contact sheets. From a shell the same run is::

    skdeepcluster cluster my_folder --n-clusters 10 --embedder pixels --image-size 16
"""

# %%
import csv
import os
import shutil
import tempfile

import matplotlib.pyplot as plt
from PIL import Image

from skdeepcluster import load_digits_images
from skdeepcluster.cli import main

images, y = load_digits_images()
folder = tempfile.mkdtemp()
for i in range(200):
    Image.fromarray(images[i]).resize((32, 32)).save(os.path.join(folder, f"digit_{i:03d}.png"))
with open(os.path.join(folder, "broken.png"), "wb") as handle:
    handle.write(b"not a picture")
with open(os.path.join(folder, "notes.txt"), "w") as handle:
    handle.write("not a picture either")

output = os.path.join(folder, "results")
status = main(["cluster", folder, "--n-clusters", "10", "--embedder", "pixels",
               "--image-size", "16", "--heads", "2", "--seed", "0", "--output", output])
print("exit status", status)

# %%
# ``labels.csv`` has one line per image: file, cluster and confidence.
with open(os.path.join(output, "labels.csv")) as handle:
    rows = list(csv.DictReader(handle))
print(rows[:3])

# %%
# Two contact sheets: the most confident images of clusters 0 and 1.
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, cluster in zip(axes, (0, 1), strict=True):
    path = os.path.join(output, f"cluster_{cluster}.png")
    if os.path.exists(path):
        ax.imshow(Image.open(path))
    ax.set_title(f"cluster {cluster}")
    ax.axis("off")
plt.show()

# %%
# The pictures and the results were written to a temporary folder: remove it.
shutil.rmtree(folder)
