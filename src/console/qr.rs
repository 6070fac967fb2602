//! Decoding the QR code on a photographed or scanned reel letter (PNG or JPEG), on the server.
//!
//! The image is decoded with bounded dimensions and allocation, turned to greyscale, shrunk
//! when large (phone photos are 12+ megapixels; a QR code needs far fewer), and handed to
//! `rqrr`, which locates the finder patterns and corrects perspective, so a photo taken at an
//! angle or rotated still decodes. A second pass with a global threshold helps dim photos.

use std::io::Cursor;

use image::{GrayImage, ImageFormat, ImageReader, Limits};

/// Largest accepted image side before decoding (pixels).
const MAX_SIDE: u32 = 12_000;
/// Images are shrunk so their longer side is at most this many pixels before detection.
const WORK_SIDE: u32 = 1_600;

/// Why an upload did not yield a QR payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QrError {
    /// Not a PNG or JPEG image, or a damaged one.
    #[error("the file is not a readable PNG or JPEG image")]
    NotAnImage,
    /// The image is larger than the console accepts.
    #[error("the image is too large (at most {MAX_SIDE} pixels a side)")]
    TooLarge,
    /// No QR code was found in the image.
    #[error("no QR code was found in the image: photograph the letter's QR code flat and in focus")]
    NotFound,
    /// A QR code was found but could not be read.
    #[error("a QR code was found but could not be read: try a sharper photo")]
    Unreadable,
}

/// Decodes the first readable QR code of a PNG or JPEG image; returns its text.
pub fn decode(bytes: &[u8]) -> Result<String, QrError> {
    let format = image::guess_format(bytes).map_err(|_| QrError::NotAnImage)?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(QrError::NotAnImage);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => QrError::TooLarge,
        _ => QrError::NotAnImage,
    })?;
    let grey = shrink(img.to_luma8());
    if let Some(found) = scan(&grey)? {
        return Ok(found);
    }
    // Second pass: binarise at the image's mean brightness (dim or low-contrast photos).
    let mean = mean(&grey);
    let bw = GrayImage::from_fn(grey.width(), grey.height(), |x, y| {
        let v = grey.get_pixel(x, y).0[0];
        image::Luma([if v < mean { 0 } else { 255 }])
    });
    scan(&bw)?.ok_or(QrError::NotFound)
}

/// `Ok(Some(text))` when a grid decodes, `Ok(None)` when none was found,
/// `Err(Unreadable)` when grids were found and none decoded.
fn scan(grey: &GrayImage) -> Result<Option<String>, QrError> {
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        // x < w and y < h by rqrr's contract, and w, h came from this image.
        grey.get_pixel(x as u32, y as u32).0[0]
    });
    let grids = prepared.detect_grids();
    if grids.is_empty() {
        return Ok(None);
    }
    for grid in &grids {
        if let Ok((_, text)) = grid.decode() {
            return Ok(Some(text));
        }
    }
    Err(QrError::Unreadable)
}

fn shrink(grey: GrayImage) -> GrayImage {
    let side = grey.width().max(grey.height());
    if side <= WORK_SIDE {
        return grey;
    }
    let scale = f64::from(WORK_SIDE) / f64::from(side);
    let w = ((f64::from(grey.width()) * scale) as u32).max(1);
    let h = ((f64::from(grey.height()) * scale) as u32).max(1);
    image::imageops::resize(&grey, w, h, image::imageops::FilterType::Triangle)
}

fn mean(grey: &GrayImage) -> u8 {
    let n = u64::from(grey.width()) * u64::from(grey.height());
    if n == 0 {
        return 128;
    }
    let sum: u64 = grey.pixels().map(|p| u64::from(p.0[0])).sum();
    (sum / n) as u8
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PAYLOAD: &str = "https://idbridge.example/bind?batch=b41425b9-b42b-47fd-95c2-f981b4c61561&reel=78211223032C7EFA";

    /// A QR code of `text`, `module` pixels a module, with a quiet zone, as a greyscale image.
    fn qr_image(text: &str, module: u32) -> GrayImage {
        let code = qrcode::QrCode::new(text.as_bytes()).unwrap();
        let n = code.width() as u32;
        let colors = code.to_colors();
        let quiet = 4;
        let side = (n + 2 * quiet) * module;
        GrayImage::from_fn(side, side, |x, y| {
            let (mx, my) = (x / module, y / module);
            let dark = mx >= quiet
                && my >= quiet
                && mx < n + quiet
                && my < n + quiet
                && colors[((my - quiet) * n + (mx - quiet)) as usize] == qrcode::Color::Dark;
            image::Luma([if dark { 20 } else { 235 }])
        })
    }

    /// Rotates by `degrees` about the centre onto a larger light canvas (nearest neighbour).
    fn rotate(img: &GrayImage, degrees: f64) -> GrayImage {
        let (w, h) = (f64::from(img.width()), f64::from(img.height()));
        let side = (w.hypot(h) * 1.1) as u32;
        let (c, s) = (degrees.to_radians().cos(), degrees.to_radians().sin());
        let half = f64::from(side) / 2.0;
        GrayImage::from_fn(side, side, |x, y| {
            let (dx, dy) = (f64::from(x) - half, f64::from(y) - half);
            let sx = c * dx + s * dy + w / 2.0;
            let sy = -s * dx + c * dy + h / 2.0;
            if sx >= 0.0 && sy >= 0.0 && sx < w && sy < h {
                *img.get_pixel(sx as u32, sy as u32)
            } else {
                image::Luma([240])
            }
        })
    }

    fn encode(img: &GrayImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_a_png() {
        let png = encode(&qr_image(PAYLOAD, 6), ImageFormat::Png);
        assert_eq!(decode(&png).unwrap(), PAYLOAD);
    }

    #[test]
    fn decodes_a_rotated_scaled_jpeg() {
        let img = rotate(&qr_image(PAYLOAD, 9), 23.0);
        let img = image::imageops::resize(
            &img,
            img.width() * 3 / 2,
            img.height() * 3 / 2,
            image::imageops::FilterType::Triangle,
        );
        let jpeg = encode(&img, ImageFormat::Jpeg);
        assert_eq!(decode(&jpeg).unwrap(), PAYLOAD);
    }

    #[test]
    fn a_large_photo_is_shrunk_and_still_decodes() {
        let img = rotate(&qr_image(PAYLOAD, 30), -12.0);
        assert!(img.width() > WORK_SIDE);
        let png = encode(&img, ImageFormat::Png);
        assert_eq!(decode(&png).unwrap(), PAYLOAD);
    }

    #[test]
    fn bad_uploads_are_named() {
        assert_eq!(decode(b"not an image").unwrap_err(), QrError::NotAnImage);
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(decode(gif).unwrap_err(), QrError::NotAnImage);
        let blank = GrayImage::from_pixel(200, 200, image::Luma([255]));
        assert_eq!(
            decode(&encode(&blank, ImageFormat::Png)).unwrap_err(),
            QrError::NotFound
        );
        let mut png = encode(&qr_image(PAYLOAD, 4), ImageFormat::Png);
        png.truncate(png.len() / 2);
        assert_eq!(decode(&png).unwrap_err(), QrError::NotAnImage);
    }
}
