"""The size a compressed frame declares in its own header, read before the frame is decoded.

A DICOM file's Rows and Columns are one claim and the codestream inside each frame is another: decoders allocate
what the codestream says (a 1 KB JPEG can declare 65500 x 65500 pixels, 4 GiB once decoded). `declared_size`
reads the frame header of JPEG (every SOF, JPEG-LS included), JPEG 2000 and HTJ2K (the SIZ segment, bare or in a
JP2 file), so a reader can compare it with the header and its limits first. RLE and deflate carry no size of their
own: their decoders fill the buffer the DICOM header sizes, so only that needs checking.
"""

from __future__ import annotations

import struct

from calibration.errors import EdgertError

# start-of-frame markers: baseline, extended, progressive, lossless (Huffman and arithmetic), and JPEG-LS (SOF55)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length field
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class CodestreamError(EdgertError, ValueError):
    """The frame's header cannot be read (it is cut short or not the format its transfer syntax names)."""


def declared_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) that a JPEG, JPEG-LS or JPEG 2000 frame declares; None for data in none of these formats."""
    data = bytes(data[: 1 << 16])  # a frame header is near the start
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    if data[:4] == b"\xff\x4f\xff\x51":
        return _j2k(data, 0)
    if data[:12] == _JP2_SIGNATURE:
        return _j2k(data, _jp2_codestream(data))
    return None


def _jpeg(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CodestreamError(f"JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, pos + 5)
            if height == 0 or width == 0:  # the height may come later in a DNL segment: refuse rather than guess
                raise CodestreamError(f"JPEG: frame header declares {width}x{height}")
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            raise CodestreamError("JPEG: scan data before a frame header")
        pos += 2 + length
    raise CodestreamError("JPEG: the data ends before a frame header")


def _j2k(data: bytes, start: int) -> tuple[int, int]:
    if data[start : start + 4] != b"\xff\x4f\xff\x51" or start + 24 > len(data):
        raise CodestreamError("JPEG 2000: no SIZ segment after the start of codestream")
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", data, start + 8)
    if xsiz <= x0 or ysiz <= y0:
        raise CodestreamError(f"JPEG 2000: image area {xsiz}x{ysiz} from offset {x0},{y0} is empty")
    return xsiz - x0, ysiz - y0


def _jp2_codestream(data: bytes) -> int:
    """The offset of the contiguous codestream box's contents in a JP2 file."""
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > len(data):
                break
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        if kind == b"jp2c":
            return pos + header
        if length < header:  # 0: to the end of the file, and not the codestream
            break
        pos += length
    raise CodestreamError("JP2: no codestream box in the first 64 KiB")
