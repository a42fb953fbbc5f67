"""napari plugin of hrdv2 (npe2 manifest ``napari.yaml``): the "hrdv2 segmentation" dock widget,
sample micrographs, a reader for the OME-Zarr outputs of ``hrdv2 apply`` and a labels writer.

Install with ``pip install "hrdv2[napari]"``; nothing here is imported until napari asks for it,
and the widget reuses the library (Segmenter, FeatureEngine, model files) rather than its own copy.
"""
