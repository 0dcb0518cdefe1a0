//! The release stage: what is done with a built image. Release keys in
//! minisign's formats ([`keys`]), a signed update bundle made from the image
//! ([`bundle`], the format is `berth_bundle`'s), and a static update repository
//! with its signed channel index ([`publish`]).
//!
//! Takes a built disk image and a secret key; gives bundles and the repository's
//! files. Nothing here changes the image.

pub mod bundle;
pub mod keys;
pub mod publish;
