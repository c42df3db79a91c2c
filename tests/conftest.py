"""Test-session settings.

One torch and one faiss thread: the seeded quality results were measured this way, and OpenMP
threads that spin-wait make small models many times slower when the CPU is shared.
"""

import faiss
import torch

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
