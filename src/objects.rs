//! Where file bytes live: a local folder (one node, the default) or any S3-compatible
//! object store (several nodes), both through the `object_store` crate. Bytes go in and
//! out as streams of chunks; no file is ever held whole in memory.
//!
//! An upload is written under a key of its own and only becomes a file once the database
//! row naming it commits; an upload that fails half way is aborted (the folder's staging
//! file removed, the store's multipart upload cancelled).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};

/// Where a deployment keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A folder on this machine (created if missing).
    Folder(PathBuf),
    /// An S3-compatible store.
    S3(S3Place),
}

/// An S3 bucket (and a key prefix inside it), and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Place {
    pub bucket: String,
    /// Keys start with this (no leading or trailing `/`); empty for none.
    pub prefix: String,
    /// `https://...` or `http://...` of an S3-compatible server; unset, AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Place {
    /// A folder path, or `s3://bucket[/prefix]` with the rest of `s3` filled in.
    pub fn parse(spec: &str, s3: S3Place) -> Result<Place, String> {
        match spec.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(format!("no bucket in {spec:?}"));
                }
                Ok(Place::S3(S3Place {
                    bucket: bucket.to_owned(),
                    prefix: prefix.trim_matches('/').to_owned(),
                    ..s3
                }))
            }
            None if spec.contains("://") => Err(format!(
                "a file store is a folder or s3://bucket (got {spec:?})"
            )),
            None => Ok(Place::Folder(PathBuf::from(spec))),
        }
    }
}

/// Why bytes could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("no such object")]
    Missing,
    #[error("file store: {0}")]
    Store(#[from] object_store::Error),
    #[error("file store: {0}")]
    Io(#[from] std::io::Error),
}

/// Chunks of an object, in order.
pub type ByteStream = BoxStream<'static, Result<Bytes, ObjectError>>;

/// The file store of a server.
#[derive(Debug, Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    /// Bytes gathered before a part is written: an S3 part is at least 5 MiB (but the
    /// last); a folder takes any size, and small parts keep an upload's memory small.
    part_bytes: usize,
}

impl Objects {
    /// Opens the store (creating the folder). Nothing is sent to an S3 store yet: a wrong
    /// address or key shows on the first upload.
    pub fn open(place: &Place) -> Result<Objects, ObjectError> {
        match place {
            Place::Folder(dir) => {
                std::fs::create_dir_all(dir)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?
                    .with_automatic_cleanup(true);
                Ok(Objects {
                    store: Arc::new(store),
                    prefix: None,
                    part_bytes: 256 * 1024,
                })
            }
            Place::S3(s3) => {
                // reqwest is built without a TLS provider of its own: it takes the
                // process's, ring (as the Redis connections do). Installing twice is a
                // no-op.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret);
                }
                Ok(Objects {
                    store: Arc::new(builder.build()?),
                    prefix: (!s3.prefix.is_empty()).then(|| Path::from(s3.prefix.as_str())),
                    part_bytes: 5 * 1024 * 1024,
                })
            }
        }
    }

    fn path(&self, key: &str) -> Path {
        match &self.prefix {
            Some(prefix) => prefix.clone().join(key),
            None => Path::from(key),
        }
    }

    /// Starts writing the object `key`.
    pub async fn create(&self, key: &str) -> Result<Upload, ObjectError> {
        let upload = self.store.put_multipart(&self.path(key)).await?;
        Ok(Upload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, self.part_bytes)),
        })
    }

    /// The bytes of `key` in `range` (all of them for `None`).
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, ObjectError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.store.get_opts(&self.path(key), options).await {
            Ok(got) => Ok(got
                .into_stream()
                .map(|c| c.map_err(ObjectError::from))
                .boxed()),
            Err(object_store::Error::NotFound { .. }) => Err(ObjectError::Missing),
            Err(e) => Err(e.into()),
        }
    }

    /// Every key in the store (under its prefix), for checks and housekeeping.
    pub async fn keys(&self) -> Result<Vec<String>, ObjectError> {
        let mut listed = self.store.list(self.prefix.as_ref());
        let mut keys = Vec::new();
        while let Some(meta) = listed.next().await {
            let location = meta?.location;
            let key = match &self.prefix {
                Some(prefix) => location
                    .prefix_match(prefix)
                    .map(|parts| {
                        parts
                            .map(|p| p.as_ref().to_owned())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_else(|| location.to_string()),
                None => location.to_string(),
            };
            keys.push(key);
        }
        Ok(keys)
    }

    /// Removes `key`; one already gone is no error.
    pub async fn remove(&self, key: &str) -> Result<(), ObjectError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// An object being written: parts go out as they fill, at most two in flight, so an
/// upload holds a few parts' worth of memory whatever its size. Dropped unfinished (its
/// request went away mid-way), it is aborted in the background.
#[derive(Debug)]
pub struct Upload {
    /// `None` once finished or aborted.
    writer: Option<WriteMultipart>,
}

impl Upload {
    /// Writes a chunk, first waiting while two parts are still on their way.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ObjectError> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(ObjectError::Io(std::io::ErrorKind::BrokenPipe.into()));
        };
        writer.wait_for_capacity(2).await?;
        writer.put(chunk);
        Ok(())
    }

    /// Completes the object.
    pub async fn finish(mut self) -> Result<(), ObjectError> {
        if let Some(writer) = self.writer.take() {
            writer.finish().await?;
        }
        Ok(())
    }

    /// Gives the object up: nothing of it stays.
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            abort(writer).await;
        }
    }
}

async fn abort(writer: WriteMultipart) {
    if let Err(e) = writer.abort().await {
        tracing::warn!(error = %e, "cannot abort an upload");
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(abort(writer));
        }
    }
}
