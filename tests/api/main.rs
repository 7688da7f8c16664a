//! The integration suite: the real server on an ephemeral port, a real database (SQLite,
//! or PostgreSQL when TEST_DATABASE_URL is set), real HTTP clients.

mod browser;
mod helpers;
mod hojre;
mod iqstore;
mod openapi;

mod admin;
mod auth;
mod bad_input;
mod canned;
mod catalogue;
mod chats;
mod chatwhizz;
mod cli;
mod cluster;
mod desk;
mod e2e;
mod edge;
mod files;
mod isolation;
mod live;
mod messages;
mod notify;
mod report;
mod search;
mod web;
mod webhooks;
mod widget;
