"""SEN12MS-CR data: layouts and exact ROI splits (layout.py), file lists and indexes (index.py), the dataset
(dataset.py), synthetic clouds (synth.py), the bundled sample (sample.py) and the release download
(download.py)."""
