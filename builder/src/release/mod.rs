//! The release stage: what is done with a built image. Release key files in
//! minisign's formats ([`keys`]; the key is `berth_bundle`'s `SecretKey`), a
//! signed update bundle made from the image ([`bundle`]; read with `berth_image`,
//! written by `berth_bundle::writer`), and a static update repository with its
//! signed channel index ([`publish`]).
//!
//! Takes a built disk image and a secret key; gives bundles and the repository's
//! files. Nothing here changes the image.

pub mod bundle;
pub mod keys;
pub mod publish;
