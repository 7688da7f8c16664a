//! The marketplace around the chats: bazaars contain malls, malls contain stores (a
//! store is an inbox), stores contain products. Customers comment on them (and on each
//! other), and like, dislike, favorite, view and follow them: one reaction of each kind
//! per customer and subject, so adding twice keeps one and every count is exact. A
//! comment or a like on a store or one of its products reaches the store's operators as
//! a notification (feed, live frame, e-mail and push), and a comment reaches the
//! subject's followers too.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbBackend, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::{Event, Person};
use super::notify::{Notification, record_notification};
use super::{Core, Error, Numbered, Principal, Result, required};
use crate::store::stmt;

/// What can be commented on or reacted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Bazaar,
    Mall,
    Store,
    Product,
    /// A customer (comments only).
    User,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Bazaar => "bazaar",
            SubjectKind::Mall => "mall",
            SubjectKind::Store => "store",
            SubjectKind::Product => "product",
            SubjectKind::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<SubjectKind> {
        Some(match s {
            "bazaar" => SubjectKind::Bazaar,
            "mall" => SubjectKind::Mall,
            "store" => SubjectKind::Store,
            "product" => SubjectKind::Product,
            "user" => SubjectKind::User,
            _ => return None,
        })
    }
}

/// A customer's reaction to a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reaction {
    Like,
    Dislike,
    Favorite,
    View,
    /// Being told of what happens on it (hojre's "notification").
    Follow,
}

impl Reaction {
    pub fn as_str(self) -> &'static str {
        match self {
            Reaction::Like => "like",
            Reaction::Dislike => "dislike",
            Reaction::Favorite => "favorite",
            Reaction::View => "view",
            Reaction::Follow => "follow",
        }
    }

    pub fn parse(s: &str) -> Option<Reaction> {
        Some(match s {
            "like" => Reaction::Like,
            "dislike" => Reaction::Dislike,
            "favorite" => Reaction::Favorite,
            "view" => Reaction::View,
            "follow" => Reaction::Follow,
            _ => return None,
        })
    }

    /// The reaction this one takes the place of (a like, a dislike).
    fn opposite(self) -> Option<Reaction> {
        match self {
            Reaction::Like => Some(Reaction::Dislike),
            Reaction::Dislike => Some(Reaction::Like),
            _ => None,
        }
    }
}

/// A bazaar, mall or product.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogueItem {
    pub id: i64,
    pub kind: SubjectKind,
    /// A mall's bazaar, a product's store (inbox); `null` for a bazaar.
    pub parent_id: Option<i64>,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub kind: SubjectKind,
    pub name: String,
    #[serde(default)]
    pub parent_id: Option<i64>,
}

/// Each reaction's count, and the comments'.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub likes: i64,
    pub dislikes: i64,
    pub favorites: i64,
    pub views: i64,
    pub followers: i64,
    pub comments: i64,
}

/// A subject as a customer sees it: its name, counts and the customer's own reactions.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub kind: SubjectKind,
    pub id: i64,
    pub name: String,
    pub counts: Counts,
    /// The caller's reactions (a customer's).
    pub mine: Vec<Reaction>,
}

/// Who reacted, and when.
#[derive(Debug, Clone, Serialize)]
pub struct Reacted {
    pub subject_kind: SubjectKind,
    pub subject_id: i64,
    pub subject_name: String,
    pub customer_id: i64,
    pub customer_name: String,
    pub customer_avatar: Option<String>,
    pub reaction: Reaction,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comment {
    pub id: i64,
    pub subject_kind: SubjectKind,
    pub subject_id: i64,
    pub subject_name: String,
    pub customer_id: i64,
    pub customer_name: String,
    pub customer_avatar: Option<String>,
    pub text: String,
    pub created_at: i64,
}

/// A store's offer to one customer.
#[derive(Debug, Clone, Serialize)]
pub struct Offer {
    pub id: i64,
    /// The store (an inbox) and its name.
    pub store_id: i64,
    pub store: String,
    /// The seller who made it.
    pub operator_id: i64,
    pub seller: String,
    pub seller_avatar: Option<String>,
    pub customer_id: i64,
    pub product_id: Option<i64>,
    pub product: Option<String>,
    pub text: String,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOffer {
    pub customer_id: i64,
    pub text: String,
    #[serde(default)]
    pub product_id: Option<i64>,
}

/// The longest comment or offer, in characters.
const MAX_COMMENT: usize = 2000;

const OFFER_COLUMNS: &str = "f.id AS id, f.inbox_id AS store_id, i.name AS store, \
    f.operator_id AS operator_id, o.name AS seller, o.avatar AS seller_avatar, \
    f.customer_id AS customer_id, f.product_id AS product_id, p.name AS product, \
    f.text AS text, f.created_at AS created_at, f.read_at AS read_at";

fn offer_of(r: &sea_orm::QueryResult) -> Result<Offer> {
    Ok(Offer {
        id: r.try_get("", "id")?,
        store_id: r.try_get("", "store_id")?,
        store: r.try_get("", "store")?,
        operator_id: r.try_get("", "operator_id")?,
        seller: r.try_get("", "seller")?,
        seller_avatar: r.try_get("", "seller_avatar")?,
        customer_id: r.try_get("", "customer_id")?,
        product_id: r.try_get("", "product_id")?,
        product: r.try_get("", "product")?,
        text: r.try_get("", "text")?,
        created_at: r.try_get("", "created_at")?,
        read_at: r.try_get("", "read_at")?,
    })
}

fn customer_of(who: &Principal) -> Result<i64> {
    match *who {
        Principal::Customer { customer_id, .. } => Ok(customer_id),
        _ => Err(Error::Forbidden("only a customer comments and reacts")),
    }
}

/// Takes a customer's reaction to a subject back (if there is one).
async fn remove_reaction(
    conn: &impl ConnectionTrait,
    backend: DbBackend,
    kind: SubjectKind,
    id: i64,
    reaction: Reaction,
    customer_id: i64,
) -> Result<()> {
    conn.execute_raw(stmt(
        backend,
        "DELETE FROM reactions WHERE subject_kind = ? AND subject_id = ? \
         AND reaction = ? AND customer_id = ?",
        [
            kind.as_str().into(),
            id.into(),
            reaction.as_str().into(),
            customer_id.into(),
        ],
    ))
    .await?;
    Ok(())
}

fn offset(page: u64, per_page: u64) -> u64 {
    page.saturating_sub(1).saturating_mul(per_page)
}

impl Core {
    /// Adds a bazaar, a mall (in a bazaar) or a product (in a store) (admin).
    pub async fn create_catalogue_item(
        &self,
        who: &Principal,
        new: NewItem,
    ) -> Result<CatalogueItem> {
        let org_id = self.require_admin(who)?.0;
        let name = required("name", &new.name, 200)?;
        let parent = match (new.kind, new.parent_id) {
            (SubjectKind::Bazaar, None) => None,
            (SubjectKind::Mall, Some(bazaar)) => {
                self.subject_name(org_id, SubjectKind::Bazaar, bazaar)
                    .await?;
                Some(bazaar)
            }
            (SubjectKind::Product, Some(store)) => {
                self.subject_name(org_id, SubjectKind::Store, store).await?;
                Some(store)
            }
            (SubjectKind::Bazaar, Some(_)) => {
                return Err(Error::Invalid("a bazaar has no parent_id".into()));
            }
            (SubjectKind::Mall | SubjectKind::Product, None) => {
                return Err(Error::Invalid(
                    "parent_id is required: a mall's bazaar, a product's store".into(),
                ));
            }
            (SubjectKind::Store | SubjectKind::User, _) => {
                return Err(Error::Invalid(
                    "kind must be bazaar, mall or product (a store is an inbox)".into(),
                ));
            }
        };
        let now = self.now_ms();
        let created = super::inserted_id(
            self.store().db(),
            "INSERT INTO catalogue (org_id, kind, parent_id, name, created_at) \
                 VALUES (?, ?, ?, ?, ?) RETURNING id",
            [
                org_id.into(),
                new.kind.as_str().into(),
                parent.into(),
                name.clone().into(),
                now.into(),
            ],
        )
        .await?;
        Ok(CatalogueItem {
            id: created,
            kind: new.kind,
            parent_id: parent,
            name,
            created_at: now,
        })
    }

    /// What a subject contains, as subjects with their counts: a bazaar's malls, a mall's
    /// stores, a store's products (a product and a user contain nothing).
    pub async fn children(
        &self,
        who: &Principal,
        kind: SubjectKind,
        id: i64,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<Subject>> {
        let org_id = who.org_id();
        self.subject_name(org_id, kind, id).await?;
        let (child, from) = match kind {
            SubjectKind::Bazaar => (
                SubjectKind::Mall,
                "FROM catalogue WHERE org_id = ? AND kind = 'mall' AND parent_id = ?",
            ),
            SubjectKind::Mall => (
                SubjectKind::Store,
                "FROM inboxes WHERE org_id = ? AND mall_id = ?",
            ),
            SubjectKind::Store => (
                SubjectKind::Product,
                "FROM catalogue WHERE org_id = ? AND kind = 'product' AND parent_id = ?",
            ),
            SubjectKind::Product | SubjectKind::User => {
                return Ok(Numbered {
                    items: Vec::new(),
                    total: 0,
                });
            }
        };
        let (total, rows) = self
            .paged(
                "id",
                from,
                "id",
                vec![org_id.into(), id.into()],
                page,
                per_page,
            )
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            items.push(self.subject(who, child, r.try_get("", "id")?).await?);
        }
        Ok(Numbered { items, total })
    }

    /// Puts a store (an inbox) in a mall, or in none (admin).
    pub async fn set_store_mall(
        &self,
        who: &Principal,
        store: i64,
        mall: Option<i64>,
    ) -> Result<()> {
        let org_id = self.require_admin(who)?.0;
        self.subject_name(org_id, SubjectKind::Store, store).await?;
        if let Some(mall) = mall {
            self.subject_name(org_id, SubjectKind::Mall, mall).await?;
        }
        self.store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                "UPDATE inboxes SET mall_id = ? WHERE id = ? AND org_id = ?",
                [mall.into(), store.into(), org_id.into()],
            ))
            .await?;
        Ok(())
    }

    /// The name of a subject of the organisation; `NotFound` for any other.
    async fn subject_name(&self, org_id: i64, kind: SubjectKind, id: i64) -> Result<String> {
        let what = match kind {
            SubjectKind::Store => "store",
            SubjectKind::User => "user",
            _ => "subject",
        };
        self.subject_names(org_id, kind, &[id])
            .await?
            .remove(&id)
            .ok_or(Error::NotFound(what))
    }

    /// The names of these subjects of the organisation (those that exist), in one query.
    async fn subject_names(
        &self,
        org_id: i64,
        kind: SubjectKind,
        ids: &[i64],
    ) -> Result<HashMap<i64, String>> {
        let mut names = HashMap::new();
        if ids.is_empty() {
            return Ok(names);
        }
        let (table, only) = match kind {
            SubjectKind::Store => ("inboxes", " AND unique_id <> ''".to_owned()),
            SubjectKind::User => ("customers", String::new()),
            other => ("catalogue", format!(" AND kind = '{}'", other.as_str())),
        };
        let listed = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        // The ids are integers and the kind one of ours: written into the statement.
        for r in self
            .store()
            .query(
                &format!(
                    "SELECT id, name FROM {table} WHERE org_id = ? AND id IN ({listed}){only}"
                ),
                [org_id.into()],
            )
            .await?
        {
            names.insert(r.try_get("", "id")?, r.try_get("", "name")?);
        }
        Ok(names)
    }

    /// The names of the subjects (`subject_id`) of a page of rows.
    async fn names_of_rows(
        &self,
        org_id: i64,
        kind: SubjectKind,
        rows: &[sea_orm::QueryResult],
    ) -> Result<HashMap<i64, String>> {
        let mut ids = rows
            .iter()
            .map(|r| r.try_get::<i64>("", "subject_id"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        ids.dedup();
        self.subject_names(org_id, kind, &ids).await
    }

    /// A page of `SELECT {columns} {from} ORDER BY {order}`, and how many rows `from`
    /// holds in all.
    async fn paged(
        &self,
        columns: &str,
        from: &str,
        order: &str,
        values: Vec<Value>,
        page: u64,
        per_page: u64,
    ) -> Result<(u64, Vec<sea_orm::QueryResult>)> {
        let total = self.count(from, values.clone()).await?;
        let rows = self
            .store()
            .query(
                &format!(
                    "SELECT {columns} {from} ORDER BY {order} LIMIT {per_page} OFFSET {}",
                    offset(page, per_page)
                ),
                values,
            )
            .await?;
        Ok((total, rows))
    }

    /// A subject with its counts and the caller's reactions.
    pub async fn subject(&self, who: &Principal, kind: SubjectKind, id: i64) -> Result<Subject> {
        let org_id = who.org_id();
        let name = self.subject_name(org_id, kind, id).await?;
        let mut counts = Counts::default();
        for r in self
            .store()
            .query(
                "SELECT reaction, COUNT(*) AS n FROM reactions \
                 WHERE subject_kind = ? AND subject_id = ? GROUP BY reaction",
                [kind.as_str().into(), id.into()],
            )
            .await?
        {
            let n: i64 = r.try_get("", "n")?;
            match Reaction::parse(&r.try_get::<String>("", "reaction")?) {
                Some(Reaction::Like) => counts.likes = n,
                Some(Reaction::Dislike) => counts.dislikes = n,
                Some(Reaction::Favorite) => counts.favorites = n,
                Some(Reaction::View) => counts.views = n,
                Some(Reaction::Follow) => counts.followers = n,
                None => {}
            }
        }
        let comments = self
            .store()
            .query(
                "SELECT COUNT(*) AS n FROM comments WHERE subject_kind = ? AND subject_id = ?",
                [kind.as_str().into(), id.into()],
            )
            .await?;
        if let Some(r) = comments.first() {
            counts.comments = r.try_get("", "n")?;
        }
        let mut mine = Vec::new();
        if let Principal::Customer { customer_id, .. } = *who {
            for r in self
                .store()
                .query(
                    "SELECT reaction FROM reactions WHERE subject_kind = ? AND subject_id = ? \
                     AND customer_id = ? ORDER BY reaction",
                    [kind.as_str().into(), id.into(), customer_id.into()],
                )
                .await?
            {
                mine.extend(Reaction::parse(&r.try_get::<String>("", "reaction")?));
            }
        }
        Ok(Subject {
            kind,
            id,
            name,
            counts,
            mine,
        })
    }

    /// Adds the caller's reaction (a like takes the place of their dislike, and the
    /// other way round); adding it again changes nothing. A first like of a store or one
    /// of its products tells the store's operators.
    pub async fn react(
        &self,
        who: &Principal,
        kind: SubjectKind,
        id: i64,
        reaction: Reaction,
    ) -> Result<Subject> {
        let customer_id = customer_of(who)?;
        if kind == SubjectKind::User {
            return Err(Error::Invalid("a user takes comments only".into()));
        }
        let org_id = who.org_id();
        let name = self.subject_name(org_id, kind, id).await?;
        // Read before the transaction: a request holds one connection at a time.
        let told_of_like = if reaction == Reaction::Like {
            let about = json!({
                "subject": {"kind": kind, "id": id, "name": name},
                "by": {"kind": "customer", "id": customer_id, "name": self.customer_name(customer_id).await?},
                "reaction": reaction,
            });
            Some((self.store_staff(org_id, kind, id).await?, about))
        } else {
            None
        };
        let backend = self.store().backend();
        let now = self.now_ms();
        let tx = self.store().write().await?;
        if let Some(opposite) = reaction.opposite() {
            remove_reaction(&*tx, backend, kind, id, opposite, customer_id).await?;
        }
        let added = tx
            .execute_raw(stmt(
                backend,
                "INSERT INTO reactions (org_id, subject_kind, subject_id, reaction, customer_id, \
                     created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    org_id.into(),
                    kind.as_str().into(),
                    id.into(),
                    reaction.as_str().into(),
                    customer_id.into(),
                    now.into(),
                ],
            ))
            .await?
            .rows_affected()
            > 0;
        let mut told = Vec::new();
        if added && let Some((staff, about)) = told_of_like {
            told = self
                .tell(&*tx, backend, org_id, staff, "like", &about, now)
                .await?;
        }
        tx.commit().await?;
        self.announce_notifications(told).await;
        self.subject(who, kind, id).await
    }

    /// Takes the caller's reaction back (if any).
    pub async fn unreact(
        &self,
        who: &Principal,
        kind: SubjectKind,
        id: i64,
        reaction: Reaction,
    ) -> Result<Subject> {
        let customer_id = customer_of(who)?;
        self.subject_name(who.org_id(), kind, id).await?;
        let backend = self.store().backend();
        remove_reaction(self.store().db(), backend, kind, id, reaction, customer_id).await?;
        self.subject(who, kind, id).await
    }

    /// Reactions of one kind: to subject `id` (everyone's), or without it the caller's
    /// own to subjects of `kind`; newest first.
    pub async fn reactions(
        &self,
        who: &Principal,
        kind: SubjectKind,
        id: Option<i64>,
        reaction: Reaction,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<Reacted>> {
        let org_id = who.org_id();
        let (filter, value) = self.listed(who, kind, id, "r").await?;
        let (total, rows) = self
            .paged(
                "r.subject_id AS subject_id, r.customer_id AS customer_id, c.name AS name, \
                 c.avatar AS avatar, r.created_at AS created_at",
                &format!(
                    "FROM reactions r JOIN customers c ON c.id = r.customer_id \
                     WHERE r.org_id = ? AND r.subject_kind = ? AND r.reaction = ? AND {filter}"
                ),
                "r.created_at DESC, r.customer_id DESC",
                vec![
                    org_id.into(),
                    kind.as_str().into(),
                    reaction.as_str().into(),
                    value.into(),
                ],
                page,
                per_page,
            )
            .await?;
        let names = self.names_of_rows(org_id, kind, &rows).await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let subject_id: i64 = r.try_get("", "subject_id")?;
            items.push(Reacted {
                subject_kind: kind,
                subject_id,
                subject_name: names.get(&subject_id).cloned().unwrap_or_default(),
                customer_id: r.try_get("", "customer_id")?,
                customer_name: r.try_get("", "name")?,
                customer_avatar: r.try_get("", "avatar")?,
                reaction,
                created_at: r.try_get("", "created_at")?,
            });
        }
        Ok(Numbered { items, total })
    }

    /// The caller comments on a subject. The store's operators (for a store or one of its
    /// products) and the subject's followers are told.
    pub async fn comment(
        &self,
        who: &Principal,
        kind: SubjectKind,
        id: i64,
        text: &str,
    ) -> Result<Comment> {
        let customer_id = customer_of(who)?;
        let org_id = who.org_id();
        let text = required("text", text, MAX_COMMENT)?;
        let subject_name = self.subject_name(org_id, kind, id).await?;
        // Read before the transaction: a request holds one connection at a time.
        let (customer_name, customer_avatar) = self.customer_face(customer_id).await?;
        let mut people = self.store_staff(org_id, kind, id).await?;
        if kind == SubjectKind::User && id != customer_id {
            people.push(Person::Customer(id));
        }
        for r in self
            .store()
            .query(
                "SELECT customer_id FROM reactions WHERE subject_kind = ? AND subject_id = ? \
                 AND reaction = 'follow' AND customer_id <> ?",
                [kind.as_str().into(), id.into(), customer_id.into()],
            )
            .await?
        {
            people.push(Person::Customer(r.try_get("", "customer_id")?));
        }
        people.sort_by_key(|p| (p.kind(), p.id()));
        people.dedup();
        let backend = self.store().backend();
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let created = super::inserted_id(
            &*tx,
            "INSERT INTO comments (org_id, subject_kind, subject_id, customer_id, text, \
                     created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            [
                org_id.into(),
                kind.as_str().into(),
                id.into(),
                customer_id.into(),
                text.clone().into(),
                now.into(),
            ],
        )
        .await?;
        let comment = Comment {
            id: created,
            subject_kind: kind,
            subject_id: id,
            subject_name,
            customer_id,
            customer_name,
            customer_avatar,
            text,
            created_at: now,
        };
        let about = json!({
            "subject": {"kind": kind, "id": id, "name": comment.subject_name},
            "by": {"kind": "customer", "id": customer_id, "name": comment.customer_name},
            "comment": {"id": comment.id, "text": comment.text},
        });
        let told = self
            .tell(&*tx, backend, org_id, people, "comment", &about, now)
            .await?;
        tx.commit().await?;
        self.announce_notifications(told).await;
        Ok(comment)
    }

    /// Removes one of the caller's comments (a customer's own; an admin's, any).
    pub async fn delete_comment(&self, who: &Principal, id: i64) -> Result<()> {
        let (filter, value): (&str, Value) = match *who {
            Principal::Customer { customer_id, .. } => ("customer_id = ?", customer_id.into()),
            Principal::Admin { .. } => ("1 = ?", 1.into()),
            Principal::Operator { .. } => {
                return Err(Error::Forbidden("an operator has no comments"));
            }
        };
        let done = self
            .store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                &format!("DELETE FROM comments WHERE id = ? AND org_id = ? AND {filter}"),
                [id.into(), who.org_id().into(), value],
            ))
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("comment"));
        }
        Ok(())
    }

    /// Comments on subject `id` (everyone's), or without it the caller's own on subjects
    /// of `kind`; newest first.
    pub async fn comments(
        &self,
        who: &Principal,
        kind: SubjectKind,
        id: Option<i64>,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<Comment>> {
        let org_id = who.org_id();
        let (filter, value) = self.listed(who, kind, id, "m").await?;
        let (total, rows) = self
            .paged(
                "m.id AS id, m.subject_id AS subject_id, m.customer_id AS customer_id, \
                 c.name AS name, c.avatar AS avatar, m.text AS text, m.created_at AS created_at",
                &format!(
                    "FROM comments m JOIN customers c ON c.id = m.customer_id \
                     WHERE m.org_id = ? AND m.subject_kind = ? AND {filter}"
                ),
                "m.id DESC",
                vec![org_id.into(), kind.as_str().into(), value.into()],
                page,
                per_page,
            )
            .await?;
        let names = self.names_of_rows(org_id, kind, &rows).await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let subject_id: i64 = r.try_get("", "subject_id")?;
            items.push(Comment {
                id: r.try_get("", "id")?,
                subject_kind: kind,
                subject_id,
                subject_name: names.get(&subject_id).cloned().unwrap_or_default(),
                customer_id: r.try_get("", "customer_id")?,
                customer_name: r.try_get("", "name")?,
                customer_avatar: r.try_get("", "avatar")?,
                text: r.try_get("", "text")?,
                created_at: r.try_get("", "created_at")?,
            });
        }
        Ok(Numbered { items, total })
    }

    /// An operator of a store makes an offer to a customer of the organisation, who is
    /// told of it (feed, frame, e-mail, push).
    pub async fn make_offer(&self, who: &Principal, store: i64, new: NewOffer) -> Result<Offer> {
        let Principal::Operator {
            org_id,
            operator_id,
        } = *who
        else {
            return Err(Error::Forbidden("only a store's operator makes offers"));
        };
        let text = required("text", &new.text, MAX_COMMENT)?;
        let store_name = self.subject_name(org_id, SubjectKind::Store, store).await?;
        let rows = self
            .store()
            .query("SELECT domain_id FROM inboxes WHERE id = ?", [store.into()])
            .await?;
        let domain_id: i64 = match rows.first() {
            Some(r) => r.try_get("", "domain_id")?,
            None => return Err(Error::NotFound("store")),
        };
        if !self
            .counted_assignments(operator_id)
            .await?
            .iter()
            .any(|a| a.covers(store, domain_id))
        {
            return Err(Error::NotFound("store"));
        }
        self.subject_name(org_id, SubjectKind::User, new.customer_id)
            .await
            .map_err(|_| Error::NotFound("customer"))?;
        let product = match new.product_id {
            Some(p) => {
                let in_store = self
                    .store()
                    .query(
                        "SELECT name FROM catalogue WHERE id = ? AND org_id = ? \
                         AND kind = 'product' AND parent_id = ?",
                        [p.into(), org_id.into(), store.into()],
                    )
                    .await?;
                match in_store.first() {
                    Some(r) => Some(r.try_get::<String>("", "name")?),
                    None => return Err(Error::NotFound("product")),
                }
            }
            None => None,
        };
        let seller = self
            .store()
            .query(
                "SELECT name, avatar FROM operators WHERE id = ?",
                [operator_id.into()],
            )
            .await?;
        let (seller, seller_avatar): (String, Option<String>) = match seller.first() {
            Some(r) => (r.try_get("", "name")?, r.try_get("", "avatar")?),
            None => return Err(Error::NotFound("operator")),
        };
        let backend = self.store().backend();
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let created = super::inserted_id(
            &*tx,
            "INSERT INTO offers (org_id, inbox_id, operator_id, customer_id, product_id, \
                     text, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [
                org_id.into(),
                store.into(),
                operator_id.into(),
                new.customer_id.into(),
                new.product_id.into(),
                text.clone().into(),
                now.into(),
            ],
        )
        .await?;
        let offer = Offer {
            id: created,
            store_id: store,
            store: store_name,
            operator_id,
            seller,
            seller_avatar,
            customer_id: new.customer_id,
            product_id: new.product_id,
            product,
            text,
            created_at: now,
            read_at: None,
        };
        let about = json!({
            "subject": {"kind": "store", "id": store, "name": offer.store},
            "by": {"kind": "operator", "id": operator_id, "name": offer.seller},
            "offer": {"id": offer.id, "text": offer.text, "product_id": offer.product_id},
        });
        let told = self
            .tell(
                &*tx,
                backend,
                org_id,
                vec![Person::Customer(new.customer_id)],
                "offer",
                &about,
                now,
            )
            .await?;
        tx.commit().await?;
        self.announce_notifications(told).await;
        Ok(offer)
    }

    /// The caller's offers (a customer's), newest first.
    pub async fn offers(
        &self,
        who: &Principal,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<Offer>> {
        let customer_id = customer_of(who)?;
        let from = "FROM offers f JOIN inboxes i ON i.id = f.inbox_id \
                    JOIN operators o ON o.id = f.operator_id \
                    LEFT JOIN catalogue p ON p.id = f.product_id \
                    WHERE f.customer_id = ?";
        let (total, rows) = self
            .paged(
                OFFER_COLUMNS,
                from,
                "f.id DESC",
                vec![customer_id.into()],
                page,
                per_page,
            )
            .await?;
        let items = rows.iter().map(offer_of).collect::<Result<Vec<_>>>()?;
        Ok(Numbered { items, total })
    }

    /// The caller marks one of their offers read (again: no change).
    pub async fn read_offer(&self, who: &Principal, id: i64) -> Result<Offer> {
        let customer_id = customer_of(who)?;
        self.store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                "UPDATE offers SET read_at = ? WHERE id = ? AND customer_id = ? AND read_at IS NULL",
                [self.now_ms().into(), id.into(), customer_id.into()],
            ))
            .await?;
        let rows = self
            .store()
            .query(
                &format!(
                    "SELECT {OFFER_COLUMNS} FROM offers f JOIN inboxes i ON i.id = f.inbox_id \
                     JOIN operators o ON o.id = f.operator_id \
                     LEFT JOIN catalogue p ON p.id = f.product_id \
                     WHERE f.id = ? AND f.customer_id = ?"
                ),
                [id.into(), customer_id.into()],
            )
            .await?;
        rows.first()
            .map(offer_of)
            .transpose()?
            .ok_or(Error::NotFound("offer"))
    }

    /// What a listing takes, as a condition on the table `alias`: the rows on subject
    /// `id` (one of the organisation's), or without it the caller's own.
    async fn listed(
        &self,
        who: &Principal,
        kind: SubjectKind,
        id: Option<i64>,
        alias: &str,
    ) -> Result<(String, i64)> {
        match id {
            Some(id) => {
                self.subject_name(who.org_id(), kind, id).await?;
                Ok((format!("{alias}.subject_id = ?"), id))
            }
            None => Ok((format!("{alias}.customer_id = ?"), customer_of(who)?)),
        }
    }

    async fn count(&self, from: &str, values: Vec<Value>) -> Result<u64> {
        let rows = self
            .store()
            .query(&format!("SELECT COUNT(*) AS n {from}"), values)
            .await?;
        let n: i64 = match rows.first() {
            Some(r) => r.try_get("", "n")?,
            None => 0,
        };
        Ok(n.max(0) as u64)
    }

    async fn customer_face(&self, id: i64) -> Result<(String, Option<String>)> {
        let rows = self
            .store()
            .query(
                "SELECT name, avatar FROM customers WHERE id = ?",
                [id.into()],
            )
            .await?;
        match rows.first() {
            Some(r) => Ok((r.try_get("", "name")?, r.try_get("", "avatar")?)),
            None => Err(Error::NotFound("customer")),
        }
    }

    async fn customer_name(&self, id: i64) -> Result<String> {
        Ok(self.customer_face(id).await?.0)
    }

    /// The operators of the store a subject belongs to: a store's own, a product's
    /// store's; nobody for a bazaar, a mall or a user.
    async fn store_staff(&self, org_id: i64, kind: SubjectKind, id: i64) -> Result<Vec<Person>> {
        let store = match kind {
            SubjectKind::Store => Some(id),
            SubjectKind::Product => self
                .store()
                .query(
                    "SELECT parent_id FROM catalogue WHERE id = ? AND org_id = ? AND kind = 'product'",
                    [id.into(), org_id.into()],
                )
                .await?
                .first()
                .map(|r| r.try_get::<i64>("", "parent_id"))
                .transpose()?,
            _ => None,
        };
        let Some(store) = store else {
            return Ok(Vec::new());
        };
        let rows = self
            .store()
            .query(
                "SELECT domain_id FROM inboxes WHERE id = ? AND org_id = ?",
                [store.into(), org_id.into()],
            )
            .await?;
        let Some(domain_id) = rows
            .first()
            .map(|r| r.try_get::<i64>("", "domain_id"))
            .transpose()?
        else {
            return Ok(Vec::new());
        };
        Ok(self
            .operators_seeing(store, domain_id)
            .await?
            .into_iter()
            .map(Person::Operator)
            .collect())
    }

    /// Writes a notification of `kind` about `about` for each person, in `tx`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn tell(
        &self,
        tx: &impl ConnectionTrait,
        backend: DbBackend,
        org_id: i64,
        people: Vec<Person>,
        kind: &str,
        about: &serde_json::Value,
        now: i64,
    ) -> Result<Vec<(Person, Notification)>> {
        let mut told = Vec::with_capacity(people.len());
        let body = json!({ "unread": 0, "chats": [], "about": about });
        // The chat and whose words and name it shows, for an erasure of either.
        let mut shows = ",".to_owned();
        if let Some(chat) = about["chat_id"].as_i64() {
            shows.push_str(&format!("{chat},"));
        }
        if let (Some(kind), Some(by)) = (about["by"]["kind"].as_str(), about["by"]["id"].as_i64()) {
            shows.push_str(&format!("{kind}:{by},"));
        }
        for person in people {
            let id =
                record_notification(tx, backend, org_id, person, kind, &body, &shows, now).await?;
            told.push((
                person,
                Notification {
                    id,
                    kind: kind.to_owned(),
                    unread: 0,
                    chats: json!([]),
                    about: Some(about.clone()),
                    created_at: now,
                    read_at: None,
                },
            ));
        }
        Ok(told)
    }

    /// Removes, within an erasure's transaction, a customer's comments, reactions and
    /// offers, and the comments on them.
    pub(super) async fn erase_social(
        &self,
        tx: &impl ConnectionTrait,
        customer_id: i64,
    ) -> Result<()> {
        let backend = self.store().backend();
        tx.execute_raw(stmt(
            backend,
            "DELETE FROM comments WHERE customer_id = ? \
             OR (subject_kind = 'user' AND subject_id = ?)",
            [customer_id.into(), customer_id.into()],
        ))
        .await?;
        for table in ["reactions", "offers"] {
            tx.execute_raw(stmt(
                backend,
                &format!("DELETE FROM {table} WHERE customer_id = ?"),
                [customer_id.into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// After the commit: each person's sockets hear of their new notification.
    pub(super) async fn announce_notifications(&self, told: Vec<(Person, Notification)>) {
        for (person, notification) in told {
            let unread = self.unread_notifications(person).await.unwrap_or(0);
            self.announce(Event::Notification {
                person,
                notification: Some(Arc::new(notification)),
                unread,
            });
        }
    }
}
