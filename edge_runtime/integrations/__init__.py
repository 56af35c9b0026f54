"""The integrations: clients of the daemon for the equipment around the cart. `view` (a browser display), `record`
(DICOM to a PACS) and `igtl` (3D Slicer and PLUS over OpenIGTLink). Like the SDK, they know the daemon only by its
wire protocol; each needs its own extra, imported only when it is used.
"""
