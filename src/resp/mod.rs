//! RESP on the wire: splitting client bytes into requests (multibulk and
//! inline), finding reply frame boundaries from backends without rebuilding
//! them, and encoding the replies keyway writes itself.

mod encode;
pub mod info;
mod request;
mod scan;
pub mod shapes;

pub use encode::{bulk, error, error_bytes, int, simple, Protocol, ReplyBuf};
pub use request::{
    decimal, split_inline_args, ArgSlices, ParseLimits, ProtocolError, Request, RequestParser,
};
pub use scan::{is_nil, FrameScanner};
