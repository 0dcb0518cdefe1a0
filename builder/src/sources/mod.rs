//! Sources: everything a build takes from outside, fetched and kept by sha256.
//!
//! Takes the [`BuildPlan`](crate::recipe::BuildPlan)'s package names, kernel and
//! image references (and the pins of `RECIPE.lock`); gives verified files in the
//! content-addressed [`cache`]: Debian packages through the host's apt ([`apt`],
//! read by [`deb`], installed with their maintainer scripts by [`install`]), the kernel and its modules ([`kernel`]), and container
//! images from layouts, archives or registries ([`oci`], [`registry`],
//! [`credentials`]), each pinned in the [`lock`] file.

pub mod apt;
pub mod boot_loader;
pub mod cache;
pub mod credentials;
pub mod deb;
pub mod install;
pub mod kernel;
pub mod lock;
pub mod oci;
pub mod registry;
