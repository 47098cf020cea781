//! Reading request bodies: media type, size limit, decompression (gzip,
//! brotli, zstd).

use std::io::Read;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::ApiError;

/// Every response's body: whole (`full`), or streamed (the export). A
/// streamed body that fails half-way ends the response with an error, so
/// the client sees a cut-off transfer, never a complete-looking one.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Brotli,
    Zstd,
}

/// Checks the headers of a JSON request before any of the body is read.
pub(crate) fn check_headers(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    check_media(headers, limit, "application/json", |essence| {
        essence.eq_ignore_ascii_case("application/json").then_some(())
    })
}

/// Checks the headers before any of the body is read: the media type is
/// one `accept` takes (`expected` names them for the 415), the encoding one
/// [`read`] knows, and an uncompressed body's declared length within `limit`.
pub(crate) fn check_media<T>(
    headers: &HeaderMap,
    limit: usize,
    expected: &'static str,
    accept: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let essence = content_type.map_or("", |ct| ct.split(';').next().unwrap_or("").trim());
    let Some(media) = accept(essence) else {
        return Err(ApiError::UnsupportedMediaType { found: content_type.unwrap_or("nothing").to_owned(), expected });
    };
    let encoding = encoding(headers)?;
    if encoding == Encoding::Identity {
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::BodyTooLarge { limit, after: "" });
        }
    }
    Ok(media)
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(Encoding::Identity) };
    let value = value.to_str().unwrap_or("(not text)").trim();
    match value.to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "br" => Ok(Encoding::Brotli),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(ApiError::UnsupportedEncoding { found: value.to_owned() }),
    }
}

/// Reads the whole body, decompressed, refusing more than `limit` bytes
/// before or after decompression.
pub(crate) async fn read(headers: &HeaderMap, body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let encoding = encoding(headers)?;
    let raw = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::BodyTooLarge { limit, after: "" });
        }
        Err(_) => return Err(ApiError::BodyRead),
    };
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => inflate(flate2::read::MultiGzDecoder::new(&raw[..]), limit, "gzip"),
        Encoding::Brotli => inflate(brotli::Decompressor::new(&raw[..], 4096), limit, "brotli"),
        Encoding::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(&raw[..]).map_err(|_| ApiError::BadEncoding { encoding: "zstd" })?;
            inflate(decoder, limit, "zstd")
        }
    }
}

/// Decompresses at most `limit + 1` bytes: a bomb is stopped at the limit.
fn inflate(decoder: impl Read, limit: usize, encoding: &'static str) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|_| ApiError::BadEncoding { encoding })?;
    if out.len() > limit {
        return Err(ApiError::BodyTooLarge { limit, after: " after decompression" });
    }
    Ok(Bytes::from(out))
}
