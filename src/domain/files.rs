//! Files: uploaded into a chat as a stream, checked by their bytes (type, size, image
//! dimensions), kept in the file store, sent as a message, and read back through signed
//! links or by a caller who can see the chat; removed by retention or on request.

use std::fmt::Display;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Value};
use serde::Serialize;
use sha2::Sha256;

use super::events::Person;
use super::messages::{Author, Message, member_of};
use super::{ChatStatus, Core, Error, Principal, Result};
use crate::objects::{ByteStream, ObjectError, Objects};
use crate::store::entity::{chat, customer, file, message, organisation, receipt, session};
use crate::store::stmt;

/// What the server takes, and how long its links last.
#[derive(Debug, Clone)]
pub struct FileLimits {
    /// Largest file, in bytes.
    pub max_file_bytes: u64,
    /// Most bytes of kept files one organisation may hold (0: no limit).
    pub max_org_bytes: u64,
    /// Content types taken, as sniffed from the bytes: `image/png`, or `image/*`.
    pub types: Vec<String>,
    /// Seconds a download link lasts at least (at most twice that: links are made per
    /// period, so that a message's frame is encoded once for all its readers).
    pub link_ttl_s: i64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_file_bytes: 25 * 1024 * 1024,
            max_org_bytes: 10 * 1024 * 1024 * 1024,
            types: DEFAULT_TYPES.split(',').map(str::to_owned).collect(),
            link_ttl_s: 3600,
        }
    }
}

/// The content types taken unless configured otherwise: pictures, documents, sound and
/// video, archives, plain text. Never HTML or SVG (which a browser would run as a page).
pub const DEFAULT_TYPES: &str = "image/jpeg,image/png,image/gif,image/webp,image/avif,\
image/heif,image/bmp,application/pdf,text/plain,audio/*,video/*,application/zip,\
application/vnd.openxmlformats-officedocument.*,application/vnd.oasis.opendocument.*,\
application/msword,application/vnd.ms-excel,application/vnd.ms-powerpoint,application/rtf";

/// Types a browser may show in place, from souq's own origin: pictures it draws, sound
/// and video it plays. Everything else is served as an attachment.
fn shown_inline(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/jpeg" | "image/png" | "image/gif" | "image/webp" | "image/avif" | "image/bmp"
    ) || content_type.starts_with("audio/")
        || content_type.starts_with("video/")
}

/// How long an upload waits to be sent as a message before it is deleted.
pub const UNSENT_KEPT_MS: i64 = 24 * 3600 * 1000;

/// Bytes read before the type is decided: enough for every magic number and for the
/// dimensions of a JPEG behind its EXIF block.
const HEAD_BYTES: usize = 128 * 1024;

/// The file store of a core, with its limits and the key that signs links.
#[derive(Debug)]
pub struct Files {
    objects: Objects,
    limits: FileLimits,
    key: tokio::sync::OnceCell<Arc<[u8]>>,
}

impl Files {
    pub fn new(objects: Objects, limits: FileLimits) -> Files {
        Files {
            objects,
            limits,
            key: tokio::sync::OnceCell::new(),
        }
    }

    pub fn limits(&self) -> &FileLimits {
        &self.limits
    }

    /// Whether files of this sniffed type are taken. Markup a browser would run (HTML,
    /// SVG, XML) and scripts never are, whatever the configured list says.
    fn allows(&self, content_type: &str) -> bool {
        let runnable = matches!(
            content_type,
            "text/html" | "text/xml" | "application/xml" | "application/xhtml+xml"
        ) || content_type.ends_with("+xml")
            || content_type.contains("javascript")
            || content_type.contains("ecmascript");
        !runnable
            && self.limits.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => content_type.starts_with(prefix),
                None => t == content_type,
            })
    }
}

/// A file as every surface shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// `<uuid>.<ext>`, the extension of its sniffed type.
    pub id: String,
    pub chat_id: Option<i64>,
    /// The name its uploader gave (without folders).
    pub name: String,
    pub size: i64,
    /// Sniffed from its bytes.
    pub content_type: String,
    pub image_width: Option<i32>,
    pub image_height: Option<i32>,
    pub created_at: i64,
    /// Who uploaded it.
    pub owner: Author,
    /// A link that downloads it without other credentials (an `<img>` can use it), for a
    /// limited time; relative to the server. `null` once its bytes are removed.
    pub url: Option<String>,
    /// Whether its bytes were removed (retention, or the customer's data erased).
    pub removed: bool,
    /// Its key in the file store.
    #[serde(skip)]
    pub path: String,
}

impl FileInfo {
    /// `inline` for what a browser may show from souq's origin, else `attachment`.
    pub fn disposition(&self) -> &'static str {
        if shown_inline(&self.content_type) {
            "inline"
        } else {
            "attachment"
        }
    }
}

/// How a download proves it may read a file.
#[derive(Debug, Clone, Copy)]
pub enum FileAccess<'a> {
    /// A caller who can see the file's chat.
    Caller(&'a Principal),
    /// A signed link's `expires` (unix seconds) and `signature`.
    Link { expires: i64, signature: &'a str },
}

/// A type decided from a file's first bytes.
struct Sniffed {
    content_type: &'static str,
    extension: &'static str,
}

fn sniff(head: &[u8]) -> Option<Sniffed> {
    if let Some(kind) = infer::get(head) {
        return Some(Sniffed {
            content_type: kind.mime_type(),
            extension: kind.extension(),
        });
    }
    // No magic number: plain text if it reads as UTF-8 (but for a character cut at the
    // end of the head) with no NUL.
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() >= HEAD_BYTES,
    };
    (text && !head.is_empty() && !head.contains(&0)).then_some(Sniffed {
        content_type: "text/plain",
        extension: "txt",
    })
}

/// The name a file is shown with: its last path component, without control characters,
/// at most 255 characters; `file.<ext>` when nothing is left.
fn clean_name(given: &str, extension: &str) -> String {
    let last = given.rsplit(['/', '\\']).next().unwrap_or("");
    let name: String = last
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect::<String>()
        .trim()
        .to_owned();
    if name.is_empty() || name == "." || name == ".." {
        format!("file.{extension}")
    } else {
        name
    }
}

/// Counts an upload in flight while it lives.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn unavailable(e: ObjectError) -> Error {
    tracing::error!(error = %e, "file store error");
    Error::Unavailable("the file store is not available; try again")
}

impl Core {
    /// Stores a file uploaded by `who` into chat `chat_id`, read from `body` as it comes.
    /// Its type is sniffed from its first bytes, its image dimensions read from them; its
    /// row is written once all its bytes are stored, so an upload that fails half way
    /// leaves nothing behind.
    ///
    /// Fails with `NotFound` for a chat the caller cannot see, `Forbidden` for an admin
    /// token, `Conflict` for a finished chat, `TooLarge` past the file's or the
    /// organisation's limit, `Unsupported` for a type not taken, `CutOff` when `body`
    /// fails, `Unavailable` when the file store does.
    pub async fn upload<S, E>(
        &self,
        who: &Principal,
        chat_id: i64,
        name: &str,
        body: S,
    ) -> Result<FileInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: Display,
    {
        let owner = member_of(who).ok_or(Error::Forbidden("an admin token cannot upload"))?;
        let chat = self.visible_chat(who, chat_id).await?;
        if chat.status == ChatStatus::Finished.as_str() {
            return Err(Error::Conflict("the chat is finished".into()));
        }
        let files = self.files();
        let used = self.org_file_bytes(who.org_id()).await?;
        let room = match files.limits.max_org_bytes {
            0 => u64::MAX,
            max => max.saturating_sub(used),
        };
        let limit = files.limits.max_file_bytes.min(room);
        let too_large = || {
            if room < files.limits.max_file_bytes {
                Error::TooLarge("the organisation's files are at their limit".into())
            } else {
                Error::TooLarge(format!(
                    "a file may have at most {} bytes",
                    files.limits.max_file_bytes
                ))
            }
        };
        let cut_off = |e: E| Error::CutOff(format!("the upload stopped: {e}"));

        let mut body = std::pin::pin!(body.fuse());
        let mut head = BytesMut::new();
        let mut pending: Option<Bytes> = None;
        while head.len() < HEAD_BYTES {
            match body.next().await {
                None => break,
                Some(Err(e)) => return Err(cut_off(e)),
                Some(Ok(chunk)) => {
                    if (head.len() + chunk.len()) as u64 > limit {
                        return Err(too_large());
                    }
                    let take = chunk.len().min(HEAD_BYTES - head.len());
                    head.extend_from_slice(&chunk[..take]);
                    if take < chunk.len() {
                        pending = Some(chunk.slice(take..));
                    }
                }
            }
        }
        let head = head.freeze();
        if head.is_empty() {
            return Err(Error::Invalid("the file is empty".into()));
        }
        let kind = sniff(&head)
            .ok_or_else(|| Error::Unsupported("the file's type is not known".into()))?;
        if !files.allows(kind.content_type) {
            return Err(Error::Unsupported(format!(
                "files of type {} are not taken",
                kind.content_type
            )));
        }
        let dimensions = kind
            .content_type
            .starts_with("image/")
            .then(|| imagesize::blob_size(&head).ok())
            .flatten()
            .and_then(|d| Some((i32::try_from(d.width).ok()?, i32::try_from(d.height).ok()?)));

        let id = format!("{}.{}", uuid::Uuid::new_v4(), kind.extension);
        let path = format!("{}/{}/{}", who.org_id(), chat.id, id);
        let _in_flight = InFlight::new(&self.metrics().uploads_in_flight);
        let mut upload = files.objects.create(&path).await.map_err(unavailable)?;
        let mut size = head.len() as u64;
        let written: Result<()> = async {
            upload.write(head).await.map_err(unavailable)?;
            if let Some(rest) = pending {
                size += rest.len() as u64;
                if size > limit {
                    return Err(too_large());
                }
                upload.write(rest).await.map_err(unavailable)?;
            }
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(cut_off)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(too_large());
                }
                upload.write(chunk).await.map_err(unavailable)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            upload.abort().await;
            return Err(e);
        }
        upload.finish().await.map_err(unavailable)?;

        let row = file::Model {
            id,
            org_id: who.org_id(),
            owner_kind: owner.kind().to_owned(),
            owner_id: owner.id(),
            name: clean_name(name, kind.extension),
            path,
            size: size as i64,
            content_type: kind.content_type.to_owned(),
            image_width: dimensions.map(|d| d.0),
            image_height: dimensions.map(|d| d.1),
            created_at: self.now_ms(),
            chat_id: Some(chat.id),
            removed_at: None,
        };
        if let Err(e) = self.insert_file(&row).await {
            if let Err(e) = files.objects.remove(&row.path).await {
                tracing::warn!(error = %e, path = %row.path, "cannot remove an upload's bytes");
            }
            return Err(e);
        }
        self.metrics().files_stored.inc();
        Ok(self.file_info(row).await)
    }

    /// Writes a file's row, if the organisation's kept files leave room for it (checked
    /// in the same transaction, one upload of an organisation at a time).
    async fn insert_file(&self, row: &file::Model) -> Result<()> {
        let backend = self.store().backend();
        let tx = self.store().write().await?;
        if backend == DbBackend::Postgres {
            tx.execute_raw(stmt(
                backend,
                "SELECT id FROM organisations WHERE id = ? FOR UPDATE",
                [row.org_id.into()],
            ))
            .await?;
        }
        let max = self.files().limits.max_org_bytes;
        if max > 0 {
            let used = org_bytes(&*tx, backend, row.org_id).await?;
            if used.saturating_add(row.size as u64) > max {
                return Err(Error::TooLarge(
                    "the organisation's files are at their limit".into(),
                ));
            }
        }
        file::Entity::insert(file::ActiveModel::from(row.clone()))
            .exec_without_returning(&*tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Bytes of the organisation's kept files.
    async fn org_file_bytes(&self, org_id: i64) -> Result<u64> {
        Ok(org_bytes(self.store().db(), self.store().backend(), org_id).await?)
    }

    /// The file `id`, for a download: by a caller who can see its chat, or a signed link.
    /// `NotFound` for a file that does not exist, is of another organisation or chat the
    /// caller cannot see, whose link is wrong or expired, or whose bytes were removed.
    pub async fn file(&self, access: FileAccess<'_>, id: &str) -> Result<FileInfo> {
        let row = file::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|f| f.removed_at.is_none())
            .ok_or(Error::NotFound("file"))?;
        match access {
            FileAccess::Caller(who) => {
                if row.org_id != who.org_id() {
                    return Err(Error::NotFound("file"));
                }
                let chat_id = row.chat_id.ok_or(Error::NotFound("file"))?;
                self.visible_chat(who, chat_id)
                    .await
                    .map_err(|_| Error::NotFound("file"))?;
            }
            FileAccess::Link { expires, signature } => {
                let now_s = self.now_ms() / 1000;
                let key = self.link_key().await?;
                if expires < now_s || !verify(&key, &row.id, expires, signature) {
                    return Err(Error::NotFound("file"));
                }
            }
        }
        Ok(self.file_info(row).await)
    }

    /// The bytes of a file (those in `range` only, if given).
    pub async fn file_bytes(
        &self,
        file: &FileInfo,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<ByteStream> {
        match self.files().objects.read(&file.path, range).await {
            Ok(bytes) => Ok(bytes),
            Err(ObjectError::Missing) => Err(Error::NotFound("file")),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// A row as surfaces show it, with a fresh link while its bytes are kept.
    pub(super) async fn file_info(&self, row: file::Model) -> FileInfo {
        let url = match (row.removed_at, self.link_key().await) {
            (None, Ok(key)) => Some(self.link(&key, &row.id)),
            (None, Err(e)) => {
                tracing::warn!(error = %e, "cannot read the link key");
                None
            }
            (Some(_), _) => None,
        };
        FileInfo {
            owner: Author {
                id: Some(row.owner_id),
                kind: row.owner_kind,
            },
            id: row.id,
            chat_id: row.chat_id,
            name: row.name,
            size: row.size,
            content_type: row.content_type,
            image_width: row.image_width,
            image_height: row.image_height,
            created_at: row.created_at,
            url,
            removed: row.removed_at.is_some(),
            path: row.path,
        }
    }

    /// The file a send with payload `file` shows: one `who` uploaded into this chat,
    /// whose bytes are kept; `NotFound` otherwise.
    pub(super) async fn file_to_send(
        &self,
        who: &Principal,
        chat_id: i64,
        id: &str,
    ) -> Result<FileInfo> {
        let author = member_of(who).ok_or(Error::NotFound("file"))?;
        let row = file::Entity::find_by_id(id.to_owned())
            .filter(file::Column::OrgId.eq(who.org_id()))
            .one(self.store().db())
            .await?
            .filter(|f| {
                f.chat_id == Some(chat_id)
                    && f.removed_at.is_none()
                    && f.owner_kind == author.kind()
                    && f.owner_id == author.id()
            })
            .ok_or(Error::NotFound("file"))?;
        Ok(self.file_info(row).await)
    }

    /// Fills in the files of messages that show one.
    pub async fn attach_files(&self, messages: &mut [Message]) -> Result<()> {
        let ids: Vec<String> = messages
            .iter()
            .filter(|m| m.file.is_none())
            .filter_map(|m| m.file_id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows = file::Entity::find()
            .filter(file::Column::Id.is_in(ids))
            .all(self.store().db())
            .await?;
        let mut infos = Vec::with_capacity(rows.len());
        for row in rows {
            infos.push(Arc::new(self.file_info(row).await));
        }
        for m in messages.iter_mut().filter(|m| m.file.is_none()) {
            if let Some(id) = &m.file_id {
                m.file = infos.iter().find(|f| &f.id == id).cloned();
            }
        }
        Ok(())
    }

    /// The key that signs links, shared by every node through the database: made by
    /// the first node that needs it.
    async fn link_key(&self) -> Result<Arc<[u8]>> {
        self.files()
            .key
            .get_or_try_init(|| async {
                let value = self
                    .shared_secret("file_links", || super::hex(&rand::random::<[u8; 32]>()))
                    .await?;
                Ok::<_, Error>(Arc::from(value.into_bytes()))
            })
            .await
            .cloned()
    }

    /// A link to file `id`, valid until the end of the period after this one.
    fn link(&self, key: &[u8], id: &str) -> String {
        let ttl = self.files().limits.link_ttl_s.max(1);
        let expires = (self.now_ms() / 1000 / ttl + 2) * ttl;
        format!(
            "/v1/files/{id}?expires={expires}&signature={}",
            signature(key, id, expires)
        )
    }
}

/// An organisation's settings for files, and what its files take.
#[derive(Debug, Clone, Serialize)]
pub struct FileSettings {
    /// Days after which a finished chat's files are removed; `null`: kept.
    pub file_retention_days: Option<i64>,
    /// Bytes of the organisation's kept files.
    pub file_bytes_used: u64,
    /// The most they may take (0: no limit).
    pub file_bytes_max: u64,
    /// The largest one file may be.
    pub max_file_bytes: u64,
}

impl Core {
    /// The organisation's file settings (admin).
    pub async fn file_settings(&self, who: &Principal) -> Result<FileSettings> {
        let org_id = self.require_admin(who)?.0;
        let org = organisation::Entity::find_by_id(org_id)
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("organisation"))?;
        Ok(FileSettings {
            file_retention_days: org.file_retention_days,
            file_bytes_used: self.org_file_bytes(org_id).await?,
            file_bytes_max: self.files().limits.max_org_bytes,
            max_file_bytes: self.files().limits.max_file_bytes,
        })
    }

    /// Checks a retention in days: 1 to 36,500, or `None` (kept for ever).
    pub(super) fn check_file_retention(days: Option<i64>) -> Result<Option<i64>> {
        if days.is_some_and(|d| !(1..=36_500).contains(&d)) {
            return Err(Error::Invalid(
                "file_retention_days must be from 1 to 36500, or null".into(),
            ));
        }
        Ok(days)
    }

    /// Removes the bytes of files whose chat finished longer ago than its organisation
    /// keeps them (a round of at most 500; the rows stay, marked removed). Every node may
    /// run it: removing twice is harmless. Returns how many were removed.
    pub async fn remove_expired_files(&self) -> Result<u64> {
        let now = self.now_ms();
        let rows = self
            .store()
            .query(
                "SELECT f.id, f.path FROM files f \
                 JOIN chats c ON c.id = f.chat_id \
                 JOIN organisations o ON o.id = f.org_id \
                 WHERE f.removed_at IS NULL AND o.file_retention_days IS NOT NULL \
                 AND c.status = 'finished' \
                 AND COALESCE(c.finished_at, c.last_activity_at) \
                     < ? - o.file_retention_days * 86400000 \
                 LIMIT 500",
                [now.into()],
            )
            .await?;
        let mut removed = 0;
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let path: String = row.try_get("", "path")?;
            // Bytes first: a file marked removed has none left; one whose bytes or mark
            // failed is tried again next round.
            if let Err(e) = self.files().objects.remove(&path).await {
                tracing::warn!(error = %e, %path, "cannot remove an expired file's bytes");
                continue;
            }
            file::Entity::update_many()
                .col_expr(
                    file::Column::RemovedAt,
                    sea_orm::sea_query::Expr::value(now),
                )
                .filter(file::Column::Id.eq(id))
                .exec(self.store().db())
                .await?;
            removed += 1;
        }
        self.metrics().files_removed.inc_by(removed);
        Ok(removed)
    }

    /// Deletes uploads never sent as a message within [`UNSENT_KEPT_MS`] of their upload,
    /// row and bytes (a round of at most 500; every node may run it). Returns how many.
    pub async fn remove_unsent_uploads(&self) -> Result<u64> {
        let before = self.now_ms() - UNSENT_KEPT_MS;
        let backend = self.store().backend();
        let rows = self
            .store()
            .query(
                "SELECT f.id, f.path FROM files f \
                 WHERE f.removed_at IS NULL AND f.created_at < ? \
                 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_id = f.id) \
                 LIMIT 500",
                [before.into()],
            )
            .await?;
        let mut removed = 0;
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let path: String = row.try_get("", "path")?;
            // The row first, and only if still unsent: a message that came meanwhile
            // keeps it. Bytes whose removal fails stay behind, unnamed.
            let deleted = self
                .store()
                .db()
                .execute_raw(stmt(
                    backend,
                    "DELETE FROM files WHERE id = ? \
                     AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_id = files.id)",
                    [id.into()],
                ))
                .await?;
            if deleted.rows_affected() == 1 {
                if let Err(e) = self.files().objects.remove(&path).await {
                    tracing::warn!(error = %e, %path, "cannot remove an unsent upload's bytes");
                }
                removed += 1;
            }
        }
        self.metrics().files_removed.inc_by(removed);
        Ok(removed)
    }

    /// Erases a customer's data on request (admin): every chat of theirs with its
    /// messages, receipts and files (bytes too), and their sessions; their profile is
    /// emptied (the id stays, so that nothing else points at a stranger). Returns how
    /// many chats were erased. `NotFound` for a customer of another organisation.
    pub async fn erase_customer(&self, who: &Principal, customer_id: i64) -> Result<u64> {
        let org_id = self.require_admin(who)?.0;
        customer::Entity::find_by_id(customer_id)
            .filter(customer::Column::OrgId.eq(org_id))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("customer"))?;
        let backend = self.store().backend();
        let tx = self.store().write().await?;
        // The chats are locked first (SQLite's writer is alone anyway): a send or an upload
        // into one of them waits, then finds it gone, so every file read below is every
        // file there is.
        let lock = match backend {
            DbBackend::Postgres => " FOR UPDATE",
            _ => "",
        };
        let mut chat_ids: Vec<i64> = Vec::new();
        for row in tx
            .query_all_raw(stmt(
                backend,
                &format!("SELECT id FROM chats WHERE org_id = ? AND customer_id = ?{lock}"),
                [org_id.into(), customer_id.into()],
            ))
            .await?
        {
            chat_ids.push(row.try_get("", "id")?);
        }
        let files = file::Entity::find()
            .filter(file::Column::ChatId.is_in(chat_ids.clone()))
            .all(&*tx)
            .await?;
        message::Entity::delete_many()
            .filter(message::Column::ChatId.is_in(chat_ids.clone()))
            .exec(&*tx)
            .await?;
        receipt::Entity::delete_many()
            .filter(receipt::Column::ChatId.is_in(chat_ids.clone()))
            .exec(&*tx)
            .await?;
        file::Entity::delete_many()
            .filter(file::Column::ChatId.is_in(chat_ids.clone()))
            .exec(&*tx)
            .await?;
        self.erase_desk(&*tx, customer_id, &chat_ids).await?;
        chat::Entity::delete_many()
            .filter(chat::Column::Id.is_in(chat_ids.clone()))
            .exec(&*tx)
            .await?;
        self.erase_notifications(&*tx, Person::Customer(customer_id), &chat_ids)
            .await?;
        self.erase_social(&*tx, customer_id).await?;
        session::Entity::delete_many()
            .filter(session::Column::OrgId.eq(org_id))
            .filter(session::Column::SubjectKind.eq("customer"))
            .filter(session::Column::SubjectId.eq(customer_id))
            .exec(&*tx)
            .await?;
        let mut emptied = customer::Entity::update_many()
            .col_expr(customer::Column::Name, sea_orm::sea_query::Expr::value(""));
        for column in [
            customer::Column::Avatar,
            customer::Column::ExternalId,
            customer::Column::Phone,
            customer::Column::TelegramId,
            customer::Column::FacebookId,
            customer::Column::VkId,
            customer::Column::Email,
        ] {
            emptied = emptied.col_expr(column, sea_orm::sea_query::Expr::value(None::<String>));
        }
        emptied
            .filter(customer::Column::Id.eq(customer_id))
            .exec(&*tx)
            .await?;
        // Commits, and tells the customer's sockets (on every node) their sessions ended.
        self.commit_access_change(tx, Person::Customer(customer_id))
            .await?;
        for f in &files {
            if let Err(e) = self.files().objects.remove(&f.path).await {
                tracing::warn!(error = %e, path = %f.path, "cannot remove an erased file's bytes");
            }
        }
        self.metrics().files_removed.inc_by(files.len() as u64);
        Ok(chat_ids.len() as u64)
    }
}

async fn org_bytes(
    db: &impl ConnectionTrait,
    backend: DbBackend,
    org_id: i64,
) -> std::result::Result<u64, sea_orm::DbErr> {
    let row = db
        .query_one_raw(stmt(
            backend,
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM files \
             WHERE org_id = ? AND removed_at IS NULL",
            [Value::from(org_id)],
        ))
        .await?;
    let used: i64 = match row {
        Some(row) => row.try_get("", "used")?,
        None => 0,
    };
    Ok(used.max(0) as u64)
}

/// The MAC of a link to file `id` that lasts until `expires`.
fn link_mac(key: &[u8], id: &str, expires: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}\n{expires}").as_bytes());
    mac
}

fn signature(key: &[u8], id: &str, expires: i64) -> String {
    super::hex(&link_mac(key, id, expires).finalize().into_bytes())
}

fn verify(key: &[u8], id: &str, expires: i64, given: &str) -> bool {
    let given: Option<Vec<u8>> = (0..given.len())
        .step_by(2)
        .map(|i| {
            given
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    // Compared in constant time.
    given.is_some_and(|given| link_mac(key, id, expires).verify_slice(&given).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_comes_from_the_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x02\0\0\0\x03\x08\x02\0\0\0";
        assert_eq!(sniff(png).map(|s| s.content_type), Some("image/png"));
        assert_eq!(
            sniff(b"%PDF-1.7\n").map(|s| s.content_type),
            Some("application/pdf")
        );
        assert_eq!(
            sniff("hello, мир".as_bytes()).map(|s| s.content_type),
            Some("text/plain")
        );
        assert!(sniff(b"\0\x01\x02binary").is_none(), "unknown binary");
        assert!(sniff(b"").is_none(), "empty");
    }

    #[test]
    fn markup_is_never_taken_but_office_documents_are() {
        let files = Files::new(
            Objects::open(&crate::objects::Place::Folder(
                std::env::temp_dir().join("souq-unit-files"),
            ))
            .expect("folder"),
            FileLimits {
                types: vec!["*".into()],
                ..FileLimits::default()
            },
        );
        for t in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/javascript",
        ] {
            assert!(!files.allows(t), "{t}");
        }
        let defaults = Files::new(files.objects.clone(), FileLimits::default());
        for t in [
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "image/png",
            "application/pdf",
        ] {
            assert!(defaults.allows(t), "{t}");
        }
        assert!(!defaults.allows("application/x-msdownload"));
    }

    #[test]
    fn html_and_svg_are_never_shown_inline() {
        for t in [
            "text/html",
            "image/svg+xml",
            "text/plain",
            "application/pdf",
            "text/xml",
        ] {
            assert!(!shown_inline(t), "{t}");
        }
        assert!(shown_inline("image/png"));
    }

    #[test]
    fn a_name_loses_its_folders_and_control_characters() {
        assert_eq!(clean_name("../../etc/passwd", "txt"), "passwd");
        assert_eq!(clean_name("C:\\photos\\label.jpg", "jpg"), "label.jpg");
        assert_eq!(clean_name("a\u{0}b\nc.png", "png"), "abc.png");
        assert_eq!(clean_name("", "png"), "file.png");
        assert_eq!(clean_name("dir/", "pdf"), "file.pdf");
    }

    #[test]
    fn a_link_verifies_only_with_its_own_id_expiry_and_key() {
        let sig = signature(b"key", "a.png", 100);
        assert!(verify(b"key", "a.png", 100, &sig));
        assert!(!verify(b"key", "b.png", 100, &sig));
        assert!(!verify(b"key", "a.png", 101, &sig));
        assert!(!verify(b"other", "a.png", 100, &sig));
        assert!(!verify(b"key", "a.png", 100, "zz"));
        assert!(!verify(b"key", "a.png", 100, &sig[..10]));
    }
}
