"""What the zoo reports about itself, generated from run records and weights folders: MODEL_CARDS.md
(``cards``), the SD-vs-constant-depth study (``comparison``), paired statistics (``paired``, ``compare``:
``sdzoo compare``) and publishing a finished run as a weights folder (``release``: ``sdzoo publish``)."""
