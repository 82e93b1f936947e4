//! Running statements on the handle's connections ([`crate::conns`]: one round trip per
//! statement), directly or, behind a pooler in transaction mode, each in a transaction of its
//! own with an unnamed prepared statement.
//!
//! sqlx prepares a statement (`Parse`, `Sync`) before it binds and executes it (`Bind`,
//! `Execute`, `Sync`). A pooler in transaction mode may hand the second half to another server
//! session, where neither a named nor the unnamed statement exists. Inside an explicit
//! transaction the pooler keeps the session, so behind a pooler every statement runs as
//! `BEGIN`, prepare, execute, `COMMIT`: correct, at the price of three extra round trips.

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::query::{Query, QueryScalar};
use sqlx::{Connection, Error, Postgres as Pg};

use crate::config::Postgres;

type Q<'q> = Query<'q, Pg, PgArguments>;
type S<'q, O> = QueryScalar<'q, Pg, O, PgArguments>;

/// Run `$q` with `$method` on one of `$pg`'s connections, or in a transaction of its own
/// behind a pooler; the connection goes back only after a statement that ended.
macro_rules! run_on {
    ($pg:expr, $q:expr, $method:ident) => {{
        let pg = $pg;
        let q = $q;
        async move {
            let mut c = pg.conns().get().await?;
            let out = if pg.config().pooler {
                async {
                    let mut tx = c.conn.begin().await?;
                    let out = q.persistent(false).$method(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(out)
                }
                .await
            } else {
                q.$method(&mut c.conn).await
            };
            c.finish(&out);
            out
        }
        .boxed()
    }};
}

/// [`Query`] run on a [`Postgres`] handle.
pub(crate) trait QueryExt<'q> {
    fn execute_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<PgQueryResult, Error>>
    where
        'q: 'a;
    fn fetch_one_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<PgRow, Error>>
    where
        'q: 'a;
    fn fetch_optional_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Option<PgRow>, Error>>
    where
        'q: 'a;
    fn fetch_all_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Vec<PgRow>, Error>>
    where
        'q: 'a;
}

impl<'q> QueryExt<'q> for Q<'q> {
    fn execute_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<PgQueryResult, Error>>
    where
        'q: 'a,
    {
        run_on!(pg, self, execute)
    }
    fn fetch_one_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<PgRow, Error>>
    where
        'q: 'a,
    {
        run_on!(pg, self, fetch_one)
    }
    fn fetch_optional_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Option<PgRow>, Error>>
    where
        'q: 'a,
    {
        run_on!(pg, self, fetch_optional)
    }
    fn fetch_all_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Vec<PgRow>, Error>>
    where
        'q: 'a,
    {
        run_on!(pg, self, fetch_all)
    }
}

/// [`QueryScalar`] run on a [`Postgres`] handle.
pub(crate) trait ScalarExt<'q, O> {
    fn fetch_one_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<O, Error>>
    where
        'q: 'a;
    fn fetch_optional_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Option<O>, Error>>
    where
        'q: 'a;
    fn fetch_all_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Vec<O>, Error>>
    where
        'q: 'a;
}

impl<'q, O> ScalarExt<'q, O> for S<'q, O>
where
    O: Send + Unpin + 'q,
    (O,): Send + Unpin + for<'r> sqlx::FromRow<'r, PgRow>,
{
    fn fetch_one_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<O, Error>>
    where
        'q: 'a,
    {
        run_on!(pg, self, fetch_one)
    }
    fn fetch_optional_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Option<O>, Error>>
    where
        'q: 'a,
    {
        run_on!(pg, self, fetch_optional)
    }
    fn fetch_all_on<'a>(self, pg: &'a Postgres) -> BoxFuture<'a, Result<Vec<O>, Error>>
    where
        'q: 'a,
    {
        run_on!(pg, self, fetch_all)
    }
}
