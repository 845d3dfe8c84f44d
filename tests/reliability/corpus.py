"""Hostile, malformed and odd-but-valid uploads, generated in code (nothing is stored in the repo).

Each `Case` says what the service must do with it: "refused" (a 4xx with the error shape, nothing
stored), "valid" (201 with finite scores) or "either" (a judgement call for the engine; only a 5xx
is wrong). `secret` is text that must never reach the stored image (patient data in metadata).
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

PATIENT = "Doe^Jane^CORPUS7Q"  # a marker that must never appear in stored bytes
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # "refused", "valid" or "either"
    filename: str = "upload.bin"
    secret: str = ""
    statuses: tuple[int, ...] = ()  # for refused cases: the acceptable 4xx statuses (empty: any 4xx)


# --------------------------------------------------------------------------------------------
# Building blocks


def chest_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A uint8 picture with an X-ray's gross structure (bright mediastinum, dark lungs), not noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) * 12) + np.exp(-((x - 0.7) ** 2 + (y - 0.5) ** 2) * 12)
    image = 0.8 - 0.5 * lungs + 0.05 * rng.standard_normal((size, size))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace))


def png_raw(
    width: int, height: int, bit_depth: int, colour_type: int, rows: bytes, extra: bytes = b""
) -> bytes:
    """A PNG written chunk by chunk: `rows` are the filtered scanlines (filter byte + samples)."""
    return (
        PNG_MAGIC
        + ihdr(width, height, bit_depth, colour_type)
        + extra
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png_from_array(array: np.ndarray, bit_depth: int, colour_type: int, extra: bytes = b"") -> bytes:
    """(H, W) or (H, W, C) unsigned samples -> PNG, filter 0 on every row (big-endian for 16 bits)."""
    height, width = array.shape[:2]
    samples = array.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1)
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)
    return png_raw(width, height, bit_depth, colour_type, rows, extra)


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A real decompression bomb: a complete, valid 8-bit gray PNG of width x height zeros whose
    IDAT is tiny (zlib streams the zero rows without holding them)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    return PNG_MAGIC + ihdr(width, height) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """Only a header that claims 10 gigapixels, and a few bytes of data."""
    return (
        PNG_MAGIC
        + ihdr(width, height)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(pil_bytes(Image.fromarray(chest_like(64)), "JPEG", quality=80))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def jpeg_repeated_scans(times: int, size: int = 256) -> bytes:
    """A progressive gray JPEG whose last scan is repeated `times` more times before its EOI: each
    copy makes the decoder pass over every coefficient again (3,000 took 36 s to decode)."""
    smooth = np.tile(np.linspace(0, 255, size).astype(np.uint8), (size, 1))  # small scans: 268 B at 256
    data = pil_bytes(Image.fromarray(smooth), "JPEG", quality=80, progressive=True)
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * times + data[end:]


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg_between_scans(segment: bytes) -> bytes:
    """A progressive JPEG with `segment` inserted before its second scan."""
    data = pil_bytes(Image.fromarray(chest_like(128)), "JPEG", quality=85, progressive=True)
    second = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    return data[:second] + segment + data[second:]


def png_with_chunks(extra: bytes, idat_tail: bytes = b"") -> bytes:
    """An 8-bit gray PNG with `extra` chunks before IDAT and `idat_tail` after the zlib stream."""
    gray = chest_like(128)
    rows = b"".join(b"\x00" + row.tobytes() for row in gray)
    return (
        PNG_MAGIC
        + ihdr(128, 128)
        + extra
        + png_chunk(b"IDAT", zlib.compress(rows, 9) + idat_tail)
        + png_chunk(b"IEND", b"")
    )


@functools.cache
def dicom_deflate_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of 64x64 pixels whose PixelData claims (and holds,
    once inflated) `inflated_bytes` of zeros: about 1 MB on disk for 1 GiB."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    data = dicom(
        rows=64, columns=64, pixel_data=b"\x00" * 8192, transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    (meta_length,) = struct.unpack("<I", data[140:144])
    meta = data[: 144 + meta_length]
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [
        compressor.compress(
            head.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes)
        )
    ]
    block = b"\x00" * (1 << 20)
    for _ in range(inflated_bytes >> 20):
        parts.append(compressor.compress(block))
    parts.append(compressor.flush())
    return meta + b"".join(parts)


def dicom(
    pixels: np.ndarray | None = None,
    *,
    patient_name: str = "",
    photometric: str = "MONOCHROME2",
    transfer_syntax: str | None = None,
    rows: int | None = None,
    columns: int | None = None,
    frames: int | None = None,
    pixel_data: bytes | None = None,
    modality: str = "CR",
    extra: dict | None = None,
) -> bytes:
    """A Part 10 DICOM file built with pydicom: uncompressed pixels, or given raw PixelData."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    # Deterministic UIDs: the same case gives the same bytes on every run.
    meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[repr((patient_name, rows, columns, frames, modality))]
    )
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = patient_name or "Anonymous"
    ds.PatientID = "ID-" + (patient_name.split("^")[-1] if patient_name else "0")
    ds.StudyDescription = "CHEST PA"
    if pixels is not None or pixel_data is not None:
        if pixels is not None:
            rows, columns = pixels.shape[:2]
        ds.Rows, ds.Columns = rows, columns
        if frames:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        bits = 8 if pixels is not None and pixels.dtype.itemsize == 1 else 16
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if pixels is not None and pixels.dtype.kind == "i" else 0
        ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
        if pixel_data is not None and transfer_syntax and transfer_syntax != ExplicitVRLittleEndian:
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encapsulated(fragment: bytes) -> bytes:
    """Encapsulated PixelData: an empty basic offset table, one fragment, the sequence delimiter."""
    if len(fragment) % 2:
        fragment += b"\x00"
    item = b"\xfe\xff\x00\xe0"
    return (
        item
        + b"\x00\x00\x00\x00"
        + item
        + struct.pack("<I", len(fragment))
        + fragment
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )


def exif_jpeg(secret: str) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = f"Patient {secret}"  # ImageDescription
    exif[0x013B] = secret  # Artist
    exif[0x0112] = 1  # Orientation: as stored
    image = Image.fromarray(chest_like(128)).convert("RGB")
    return pil_bytes(image, "JPEG", quality=85, exif=exif.tobytes(), comment=f"name={secret}".encode())


# --------------------------------------------------------------------------------------------
# The corpus


def corpus(max_upload_bytes: int) -> list[Case]:
    """Every case; `max_upload_bytes` is the upload limit the test sets (the oversize cases exceed it)."""
    from pydicom.uid import JPEGLSLossless, RLELossless

    gray = chest_like(256)
    png = pil_bytes(Image.fromarray(gray), "PNG")
    jpeg = pil_bytes(Image.fromarray(gray), "JPEG", quality=85)
    dcm = dicom(gray.astype(np.uint16) * 16, patient_name="")
    noise = np.random.default_rng(1).integers(0, 256, (1100, 1100), dtype=np.uint8)
    big_png = pil_bytes(Image.fromarray(noise), "PNG", compress_level=0)
    assert len(big_png) > max_upload_bytes, "the oversize case must exceed the limit"
    rgb = np.stack([gray, gray[::-1], gray.T], axis=-1)

    cases = [
        # --- not images at all
        Case("empty", b"", "refused", "empty.png", statuses=(400,)),
        Case("text", b"hello, this is not an x-ray\n" * 20, "refused", "notes.txt"),
        Case(
            "html-script",
            b"<!doctype html><html><script>alert(document.cookie)</script></html>",
            "refused",
            "x.html",
        ),
        Case(
            "svg-script",
            b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script>'
            b'<rect width="10" height="10"/></svg>',
            "refused",
            "chest.svg",
        ),
        Case(
            "pdf",
            b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
            "refused",
            "report.pdf",
        ),
        Case("zip", _zip({"chest.png": png, "../../evil.sh": b"rm -rf /"}), "refused", "images.zip"),
        Case("json", b'{"image": "base64...", "patient": "' + PATIENT.encode() + b'"}', "refused", "x.json"),
        Case("elf", b"\x7fELF\x02\x01\x01" + b"\x00" * 200, "refused", "a.out"),
        Case(
            "windows-exe",
            b"MZ\x90\x00" + b"\x00" * 200 + b"This program cannot be run in DOS mode",
            "refused",
            "x.exe",
        ),
        Case("random-bytes", np.random.default_rng(2).bytes(4096), "refused", "noise.bin"),
        Case(
            "png-magic-then-html", PNG_MAGIC + b"<html><script>alert(1)</script></html>", "refused", "x.png"
        ),
        Case("jpeg-magic-only", b"\xff\xd8\xff", "refused", "x.jpg"),
        # --- broken images
        Case("png-signature-only", PNG_MAGIC, "refused", "x.png"),
        Case("png-truncated-half", png[: len(png) // 2], "refused", "half.png"),
        Case("png-ihdr-only", PNG_MAGIC + ihdr(256, 256), "refused", "x.png"),
        Case("png-bad-crc", _corrupt_crc(png), "refused", "crc.png"),
        Case("png-zero-size", PNG_MAGIC + ihdr(0, 0) + png_chunk(b"IEND", b""), "refused", "zero.png"),
        Case("png-bad-colour-type", png_raw(4, 4, 8, 7, b"\x00" * 20), "refused", "x.png"),
        Case(
            "png-idat-not-zlib",
            PNG_MAGIC + ihdr(16, 16) + png_chunk(b"IDAT", b"\x78\x9cnot zlib") + png_chunk(b"IEND", b""),
            "refused",
            "x.png",
        ),
        Case("jpeg-truncated-header", jpeg[:300], "refused", "head.jpg"),
        Case("jpeg-truncated-half", jpeg[: len(jpeg) // 2], "refused", "half.jpg"),
        Case("dicom-truncated", dcm[: len(dcm) // 2], "refused", "half.dcm"),
        Case(
            "dicom-garbage-after-dicm",
            b"\x00" * 128 + b"DICM" + np.random.default_rng(3).bytes(2000),
            "refused",
            "x.dcm",
        ),
        Case("dicom-dicm-only", b"\x00" * 128 + b"DICM", "refused", "x.dcm"),
        Case(
            "dicom-no-pixels",
            dicom(None, patient_name=PATIENT, modality="SR"),
            "refused",
            "report.dcm",
            PATIENT,
        ),
        Case(
            "dicom-unsupported-syntax",
            dicom(
                rows=64,
                columns=64,
                pixel_data=encapsulated(b"\xff\xd8garbage" * 10),
                transfer_syntax=JPEGLSLossless,
            ),
            "refused",
            "jls.dcm",
        ),
        Case(
            "dicom-rle-garbage",
            dicom(
                rows=64, columns=64, pixel_data=encapsulated(b"\x01\x00" * 40), transfer_syntax=RLELossless
            ),
            "refused",
            "rle.dcm",
        ),
        Case(
            "dicom-pixels-short",
            dicom(rows=512, columns=512, pixel_data=b"\x00" * 1000),
            "refused",
            "short.dcm",
        ),
        Case("dicom-deflate-corrupt", _deflate_corrupt(), "refused", "deflate.dcm"),
        Case(
            "dicom-sequence-nesting-3000",
            _nested_sequences(dicom(gray[:32, :32]), 3000),
            "refused",
            "nest.dcm",
        ),
        Case(
            "dicom-bits-stored-0", dicom(gray.astype(np.uint16), extra={"BitsStored": 0}), "refused", "b0.dcm"
        ),
        # Malformed numbers in the header: refusing is right, and so are finite scores; NaN is not.
        Case(
            "dicom-rescale-slope-nan",
            dicom(gray.astype(np.uint16), extra={"RescaleSlope": "NaN", "RescaleIntercept": 0}),
            "either",
            "nan.dcm",
        ),
        Case(
            "dicom-rescale-slope-inf",
            dicom(gray.astype(np.uint16), extra={"RescaleSlope": "Inf", "RescaleIntercept": 0}),
            "either",
            "inf.dcm",
        ),
        Case(
            "dicom-rescale-slope-1e308",
            dicom(gray.astype(np.uint16), extra={"RescaleSlope": "1e308", "RescaleIntercept": 0}),
            "either",
            "big.dcm",
        ),
        Case(
            "dicom-window-nan",
            dicom(gray.astype(np.uint16), extra={"WindowCenter": "NaN", "WindowWidth": "NaN"}),
            "either",
            "wnan.dcm",
        ),
        # --- bombs: refused from the header, before any pixel is decoded
        Case("png-header-bomb-100000x100000", png_header_bomb(), "refused", "bomb.png", statuses=(413,)),
        Case("png-real-bomb-8000x8000", png_bomb(8000, 8000), "refused", "bomb2.png", statuses=(413,)),
        Case(
            "jpeg-header-bomb-65500x65500",
            jpeg_with_size(65500, 65500),
            "refused",
            "bomb.jpg",
            statuses=(413,),
        ),
        Case(
            "dicom-header-bomb-65535x65535",
            dicom(rows=65535, columns=65535, pixel_data=b"\x00" * 64),
            "refused",
            "bomb.dcm",
            statuses=(413,),
        ),
        Case(
            "dicom-frames-bomb",
            dicom(rows=4096, columns=4096, frames=1000, pixel_data=b"\x00" * 64),
            "refused",
            "frames.dcm",
            statuses=(413,),
        ),
        # --- expensive to decode whatever their pixel count: refused from their headers
        Case("jpeg-last-scan-x3000", jpeg_repeated_scans(3000), "refused", "scans.jpg", statuses=(422,)),
        Case("jpeg-last-scan-x150", jpeg_repeated_scans(150), "refused", "scans150.jpg", statuses=(422,)),
        Case("png-8000000x1", png_bomb(8_000_000, 1), "refused", "row.png", statuses=(413,)),
        Case(
            "png-60000000x1",
            PNG_MAGIC
            + ihdr(60_000_000, 1)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
            + png_chunk(b"IEND", b""),
            "refused",
            "row60.png",
            statuses=(413,),
        ),
        Case("png-1x8000000", png_header_bomb(1, 8_000_000), "refused", "column.png", statuses=(413,)),
        Case("png-15000x1000", png_bomb(15_000, 1_000), "refused", "strip.png", statuses=(422,)),
        Case(
            "dicom-deflate-1gib", dicom_deflate_bomb(1 << 30), "refused", "deflate-bomb.dcm", statuses=(413,)
        ),
        Case(
            "dicom-jpeg-many-scans",
            _dicom_jpeg_bytes(jpeg_repeated_scans(500, 64), 64),
            "refused",
            "scans.dcm",
            statuses=(422,),
        ),
        # --- a DICOM that says its pixels hold text; one whose PixelData is empty
        Case(
            "dicom-burned-in-annotation",
            dicom(gray, patient_name=PATIENT, extra={"BurnedInAnnotation": "YES"}),
            "refused",
            "burned.dcm",
            PATIENT,
            statuses=(422,),
        ),
        Case(
            "dicom-empty-pixel-data",
            dicom(rows=64, columns=64, pixel_data=b""),
            "refused",
            "empty.dcm",
            statuses=(400,),
        ),
        # --- patient data hidden where a metadata stripper would keep it: the stored copy is
        # re-encoded from the pixels, so none of it may reach storage
        Case("jpeg-text-after-eoi", jpeg + f"Patient: {PATIENT}".encode(), "valid", "tail.jpg", PATIENT),
        Case(
            "jpeg-com-between-scans",
            jpeg_between_scans(jpeg_segment(0xFE, f"name={PATIENT}".encode())),
            "valid",
            "com.jpg",
            PATIENT,
        ),
        Case(
            "jpeg-exif-between-scans",
            jpeg_between_scans(jpeg_segment(0xE1, b"Exif\x00\x00" + _exif_bytes(PATIENT))),
            "valid",
            "exif-scans.jpg",
            PATIENT,
        ),
        Case(
            "png-gama-extra-bytes",
            png_with_chunks(png_chunk(b"gAMA", struct.pack(">I", 45455) + PATIENT.encode())),
            "either",
            "gama.png",
            PATIENT,
        ),
        Case(
            "png-trns-extra-bytes",
            png_with_chunks(png_chunk(b"tRNS", b"\x00\x00" + PATIENT.encode())),
            "either",
            "trns.png",
            PATIENT,
        ),
        Case(
            "png-sbit-extra-bytes",
            png_with_chunks(png_chunk(b"sBIT", b"\x08" + PATIENT.encode())),
            "either",
            "sbit.png",
            PATIENT,
        ),
        Case(
            "png-plte-in-gray",
            png_with_chunks(png_chunk(b"PLTE", (PATIENT.encode() + b"\x00\x00")[:18])),
            "either",
            "plte.png",
            PATIENT,
        ),
        Case(
            "png-bytes-after-zlib-in-idat",
            png_with_chunks(b"", idat_tail=PATIENT.encode()),
            "either",
            "idat-tail.png",
            PATIENT,
        ),
        # --- other formats
        Case(
            "gif", pil_bytes(Image.fromarray(gray).convert("P"), "GIF"), "refused", "x.gif", statuses=(415,)
        ),
        Case("bmp", pil_bytes(Image.fromarray(gray), "BMP"), "refused", "x.bmp", statuses=(415,)),
        Case("tiff", pil_bytes(Image.fromarray(gray), "TIFF"), "refused", "x.tif", statuses=(415,)),
        Case("webp", pil_bytes(Image.fromarray(gray), "WEBP"), "refused", "x.webp", statuses=(415,)),
        Case("ico", pil_bytes(Image.fromarray(gray[:64, :64]), "ICO"), "refused", "x.ico", statuses=(415,)),
        # --- too large
        Case("oversize-valid-png", big_png, "refused", "big.png", statuses=(413,)),
        Case("oversize-garbage", b"\x00" * (max_upload_bytes + 1), "refused", "big.bin", statuses=(413,)),
        # --- odd but valid
        Case("path-traversal-name", png, "valid", "../../etc/passwd.png"),
        Case("300-char-name", png, "valid", "x" * 296 + ".png"),
        Case("name-with-nul-and-html", png, "valid", "a\x00<script>.png"),
        Case("png-as-dcm-name", png, "valid", "lying.dcm"),
        Case(
            "cmyk-jpeg",
            pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
            "valid",
            "cmyk.jpg",
        ),
        Case(
            "palette-png",
            pil_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
            "valid",
            "p.png",
        ),
        Case(
            "la-png", pil_bytes(Image.fromarray(np.stack([gray, 255 - gray], -1)), "PNG"), "valid", "la.png"
        ),
        Case("rgba-png", pil_bytes(Image.fromarray(np.dstack([rgb, gray])), "PNG"), "valid", "rgba.png"),
        Case("png-48-bit", png_from_array(rgb.astype(np.uint16) * 257, 16, 2), "valid", "rgb48.png"),
        Case(
            "png-64-bit-rgba",
            png_from_array(np.dstack([rgb, gray]).astype(np.uint16) * 257, 16, 6),
            "valid",
            "rgba64.png",
        ),
        Case("png-16-bit-gray", png_from_array(gray.astype(np.uint16) * 257, 16, 0), "valid", "gray16.png"),
        Case("png-1-bit", pil_bytes(Image.fromarray(gray > 128), "PNG"), "valid", "bw.png"),
        Case("png-interlaced", _adam7(gray), "valid", "adam7.png"),
        Case("png-trailing-garbage", png + b"<script>alert(1)</script>" * 10, "valid", "tail.png"),
        Case("constant-0-png", pil_bytes(Image.new("L", (256, 256), 0), "PNG"), "valid", "black.png"),
        Case("constant-255-png", pil_bytes(Image.new("L", (256, 256), 255), "PNG"), "valid", "white.png"),
        Case(
            "constant-16-bit-png",
            png_from_array(np.full((64, 64), 40000, np.uint16), 16, 0),
            "valid",
            "flat16.png",
        ),
        Case("constant-jpeg", pil_bytes(Image.new("L", (128, 128), 128), "JPEG"), "valid", "flat.jpg"),
        Case("constant-dicom", dicom(np.full((64, 64), 1000, np.uint16)), "valid", "flat.dcm"),
        Case("tiny-1x1-png", pil_bytes(Image.new("L", (1, 1), 77), "PNG"), "either", "1x1.png"),
        Case(
            "tiny-2x2-png",
            pil_bytes(Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)), "PNG"),
            "either",
            "2x2.png",
        ),
        Case("tiny-1x1-jpeg", pil_bytes(Image.new("RGB", (1, 1), (9, 9, 9)), "JPEG"), "either", "1x1.jpg"),
        Case("wide-4000x2", pil_bytes(Image.new("L", (4000, 2), 100), "PNG"), "either", "wide.png"),
        Case("grayscale-jpeg", jpeg, "valid", "gray.jpg"),
        Case(
            "progressive-jpeg",
            pil_bytes(Image.fromarray(rgb), "JPEG", progressive=True, quality=80),
            "valid",
            "prog.jpg",
        ),
        Case("jpeg-exif-rotated", _rotated_jpeg(), "valid", "rotated.jpg", PATIENT),
        Case(
            "png-huge-text-chunk",
            png_from_array(
                gray, 8, 0, extra=png_chunk(b"tEXt", b"Comment\x00" + (PATIENT.encode() + b" ") * 40_000)
            ),
            "valid",
            "text.png",
            PATIENT,
        ),
        Case(
            "png-itxt-and-exif",
            png_from_array(
                gray,
                8,
                0,
                extra=png_chunk(
                    b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<x>" + PATIENT.encode() + b"</x>"
                )
                + png_chunk(b"eXIf", _exif_bytes(PATIENT)),
            ),
            "valid",
            "xmp.png",
            PATIENT,
        ),
        Case(
            "png-ztxt-bomb",
            png_from_array(
                gray, 8, 0, extra=png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 64_000_000, 9))
            ),
            "either",
            "ztxt.png",
        ),
        Case("jpeg-exif-patient", exif_jpeg(PATIENT), "valid", "exif.jpg", PATIENT),
        Case("dicom-patient-name", dicom(gray, patient_name=PATIENT), "valid", "patient.dcm", PATIENT),
        Case(
            "dicom-16-bit-monochrome1",
            dicom(
                (4095 - gray.astype(np.uint16) * 16),
                photometric="MONOCHROME1",
                patient_name=PATIENT,
                extra={"BitsStored": 12, "HighBit": 11},
            ),
            "valid",
            "mono1.dcm",
            PATIENT,
        ),
        Case(
            "dicom-signed-rescaled",
            dicom(gray.astype(np.int16) * 8 - 1024, extra={"RescaleSlope": 1, "RescaleIntercept": -1024}),
            "valid",
            "ct-like.dcm",
        ),
        Case("dicom-rgb", _dicom_rgb(rgb, "RGB"), "valid", "rgb.dcm"),
        Case("dicom-ybr-full", _dicom_rgb(rgb, "YBR_FULL"), "valid", "ybr.dcm"),
        Case(
            "dicom-3-frames",
            dicom(
                rows=64,
                columns=64,
                frames=3,
                pixel_data=np.repeat(gray[None, :64, :64].astype(np.uint16), 3, 0).tobytes(),
            ),
            "valid",
            "frames.dcm",
        ),
        Case(
            "dicom-1-bit",
            dicom(
                rows=64,
                columns=64,
                pixel_data=b"\xaa" * 512,
                extra={"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0},
            ),
            "valid",
            "bits1.dcm",
        ),
        Case("dicom-jpeg-baseline", _dicom_jpeg(gray), "valid", "jpeg.dcm"),
        Case(
            "png-16-bit-la",
            png_from_array(
                np.stack([gray.astype(np.uint16) * 257, np.full(gray.shape, 65535, np.uint16)], -1), 16, 4
            ),
            "valid",
            "la16.png",
        ),
        Case("png-2-bit-gray", png_raw(4, 4, 2, 0, b"\x00\xff" * 4), "either", "2bit.png"),
        Case(
            "dicom-window-width-0",
            dicom(gray.astype(np.uint16), extra={"WindowCenter": 100, "WindowWidth": 0}),
            "either",
            "w0.dcm",
        ),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _corrupt_crc(png: bytes) -> bytes:
    data = bytearray(png)
    data[len(PNG_MAGIC) + 8 + 13] ^= 0xFF  # first byte of IHDR's CRC
    return bytes(data)


def _adam7(gray: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit gray PNG: seven passes of sub-images, filter 0."""
    passes = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]
    rows = bytearray()
    for x0, y0, dx, dy in passes:
        sub = gray[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                rows += b"\x00" + row.tobytes()
    height, width = gray.shape
    return (
        PNG_MAGIC
        + ihdr(width, height, 8, 0, 1)
        + png_chunk(b"IDAT", zlib.compress(bytes(rows)))
        + png_chunk(b"IEND", b"")
    )


def _exif_bytes(secret: str) -> bytes:
    exif = Image.Exif()
    exif[0x013B] = secret
    return exif.tobytes()[6:]  # PNG's eXIf holds the TIFF structure without the "Exif\0\0" prefix


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    exif[0x013B] = PATIENT
    image = Image.fromarray(chest_like(128)[:, :96])
    return pil_bytes(image, "JPEG", quality=85, exif=exif.tobytes())


def _deflate_corrupt() -> bytes:
    """Deflated Explicit VR Little Endian whose deflated body is cut in the middle."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    data = dicom(
        rows=64, columns=64, pixel_data=bytes(range(256)) * 32, transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    (meta_length,) = struct.unpack("<I", data[140:144])  # (0002,0000) group length after preamble+DICM
    body_at = 144 + meta_length
    body = data[body_at:]
    return data[:body_at] + body[: len(body) // 2]  # the deflate stream stops halfway


def _nested_sequences(data: bytes, depth: int) -> bytes:
    """`depth` sequences nested in one another (undefined lengths), inserted before PatientName."""
    sq_open = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    item_open = struct.pack("<HH", 0xFFFE, 0xE000) + b"\xff\xff\xff\xff"
    item_close = struct.pack("<HH", 0xFFFE, 0xE00D) + b"\0\0\0\0"
    sq_close = struct.pack("<HH", 0xFFFE, 0xE0DD) + b"\0\0\0\0"
    at = data.find(struct.pack("<HH", 0x0010, 0x0010) + b"PN")
    return data[:at] + (sq_open + item_open) * depth + (item_close + sq_close) * depth + data[at:]


def _dicom_rgb(rgb: np.ndarray, photometric: str) -> bytes:
    height, width = rgb.shape[:2]
    return dicom(
        rows=height,
        columns=width,
        pixel_data=rgb.astype(np.uint8).tobytes(),
        photometric=photometric,
        extra={
            "SamplesPerPixel": 3,
            "PlanarConfiguration": 0,
            "BitsAllocated": 8,
            "BitsStored": 8,
            "HighBit": 7,
        },
    )


def _dicom_jpeg(gray: np.ndarray) -> bytes:
    return _dicom_jpeg_bytes(pil_bytes(Image.fromarray(gray), "JPEG", quality=90), gray.shape[0])


def _dicom_jpeg_bytes(jpeg: bytes, size: int) -> bytes:
    from pydicom.uid import JPEGBaseline8Bit

    height = width = size
    return dicom(
        rows=height,
        columns=width,
        pixel_data=encapsulated(jpeg),
        transfer_syntax=JPEGBaseline8Bit,
        extra={"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
    )
