//! The store: connecting, creating the table, and the [`Store`] operations as conditional
//! writes.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use oncely_core::lifecycle::{claim_lost, decide_claim, decide_version};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Key, Record, RecordState, Result, Scope, Store,
    StoreStats, Timestamp, VersionCheck, async_trait,
};

use crate::item::{ID, Item, PART_BYTES, from_item, n, part_id, record_id, s, ttl, version_id};
use crate::options::DynamoOptions;

/// The DynamoDB store. See the crate docs.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// The endpoint and table: names the store in errors.
    name: String,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("store", &self.name)
            .finish()
    }
}

/// Whether `error` is DynamoDB refusing a write whose condition did not hold.
fn condition_failed<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    error.code() == Some("ConditionalCheckFailedException")
}

impl DynamoStore {
    /// Connects with a `dynamodb://` URL (see [`DynamoOptions`]); creates the table if missing,
    /// unless the URL says `oncely_migrate=false`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url.parse()?).await
    }

    /// Connects with `options`.
    pub async fn connect_with(options: DynamoOptions) -> Result<Self> {
        let name = format!("{}/{}", options.endpoint, options.table);
        let credentials = oncely_aws::credentials(&options.endpoint, &options.region)
            .await
            .map_err(|e| Error::Unavailable {
                store: name.clone(),
                source: e.into(),
            })?;
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_dynamodb::config::Region::new(
                options.region.clone(),
            ))
            .credentials_provider(credentials)
            .endpoint_url(&options.endpoint)
            .http_client(oncely_aws::https_client())
            .build();
        let store = DynamoStore {
            client: Client::from_conf(config),
            table: options.table,
            name,
        };
        if options.migrate {
            store.create_table().await?;
        } else {
            store.describe_table().await?;
        }
        Ok(store)
    }

    /// The table's status; an error if it does not exist or DynamoDB is not reachable.
    async fn describe_table(&self) -> Result<Option<TableStatus>> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(described.table.and_then(|t| t.table_status))
    }

    /// Creates the table (on-demand capacity, partition key `o_id`) and turns its TTL on
    /// (`o_ttl`), unless done already.
    async fn create_table(&self) -> Result<()> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(ID)
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("name and type given"),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(ID)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("name and type given"),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(self.err(e)),
        }
        // A new table is CREATING for a few seconds on DynamoDB.
        for _ in 0..600 {
            if self.describe_table().await? == Some(TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let live = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.err(e))?
            .time_to_live_description
            .and_then(|d| d.time_to_live_status);
        if matches!(
            live,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) {
            return Ok(());
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("o_ttl")
                    .build()
                    .expect("name and flag given"),
            )
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn err<E, R>(&self, error: SdkError<E, R>) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let unreachable = matches!(
            error,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        );
        let source = oncely_aws::describe(&error).into();
        if unreachable {
            Error::Unavailable {
                store: self.name.clone(),
                source,
            }
        } else {
            Error::Backend {
                store: self.name.clone(),
                source,
            }
        }
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            store: self.name.clone(),
            detail,
        }
    }

    /// The item under `id`, read consistently.
    async fn get_item(&self, id: String) -> Result<Option<Item>> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .key(ID, s(&id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.err(e))?
            .item)
    }

    /// The record an item holds, its outcome's parts read back if it was too large for the
    /// item itself.
    async fn decode(&self, item: &Item) -> Result<Record> {
        let mut record = from_item(item).map_err(|d| self.corrupt(d))?;
        let parts = match item.get("o_parts") {
            None => return Ok(record),
            Some(AttributeValue::N(parts)) => parts
                .parse::<usize>()
                .map_err(|_| self.corrupt(format!("o_parts is not a count: {parts}")))?,
            Some(_) => return Err(self.corrupt("o_parts is not a number".into())),
        };
        let mut outcome = Vec::new();
        for part in 0..parts {
            let id = part_id(&record.scope, &record.key, record.token, part);
            match self
                .get_item(id)
                .await?
                .and_then(|mut i| i.remove("o_part"))
            {
                Some(AttributeValue::B(bytes)) => outcome.extend_from_slice(bytes.as_ref()),
                _ => {
                    return Err(self.corrupt(format!(
                        "part {part} of {parts} of the outcome of {}/{} is missing",
                        record.scope, record.key
                    )));
                }
            }
        }
        record.state = RecordState::Completed { outcome };
        Ok(record)
    }

    async fn read(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        match self.get_item(record_id(scope, key)).await? {
            Some(item) => Ok(Some(self.decode(&item).await?)),
            None => Ok(None),
        }
    }

    /// One conditional write: a key nobody holds (absent, or its record expired) is claimed
    /// by it, the attempt counted on from the expired record's; otherwise DynamoDB answers the
    /// live record, which decides the answer. The write is the lifecycle's `New` rule
    /// (`oncely_core::lifecycle::decide_claim`) as an update expression, so that a takeover
    /// costs one round trip, as a completion does.
    async fn claim_one(&self, request: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome> {
        let fresh = decide_claim(None, request, now);
        let Some(record) = &fresh.write else {
            return Ok(fresh.outcome);
        };
        loop {
            // The fingerprint is the new claim's: set, or removed with the expired record's.
            let (set_fp, remove_fp) = match &record.fingerprint {
                Some(_) => (", o_fp = :fp", ""),
                None => ("", ", o_fp"),
            };
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(ID, s(&record_id(&record.scope, &record.key)))
                .update_expression(format!(
                    "SET o_scope = :scope, o_key = :key, o_state = :p, o_token = :token, \
                     o_attempt = if_not_exists(o_attempt, :zero) + :one, o_created = :now, \
                     o_expires = :until, o_ttl = :ttl{set_fp} REMOVE o_outcome, o_parts{remove_fp}"
                ))
                .condition_expression("attribute_not_exists(o_id) OR o_expires < :now")
                .expression_attribute_values(":scope", s(record.scope.as_str()))
                .expression_attribute_values(":key", s(record.key.as_str()))
                .expression_attribute_values(":p", s("p"))
                .expression_attribute_values(":token", n(record.token))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(now.as_millis()))
                .expression_attribute_values(":until", n(record.expires_at.as_millis()))
                .expression_attribute_values(":ttl", ttl(record.expires_at))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            if let Some(fp) = &record.fingerprint {
                update = update.expression_attribute_values(
                    ":fp",
                    AttributeValue::B(Blob::new(fp.as_bytes().to_vec())),
                );
            }
            let live = match update.send().await {
                Ok(written) => {
                    let attempt =
                        match written.attributes.as_ref().and_then(|a| a.get("o_attempt")) {
                            Some(AttributeValue::N(a)) => a.parse::<u32>().ok(),
                            _ => None,
                        }
                        .ok_or_else(|| {
                            self.corrupt("o_attempt was not answered as a number".into())
                        })?;
                    let mut outcome = fresh.outcome.clone();
                    if let ClaimOutcome::New(claim) = &mut outcome {
                        claim.attempt = attempt;
                    }
                    return Ok(outcome);
                }
                Err(e) if condition_failed(&e) => {
                    let old = e.as_service_error().and_then(|e| match e {
                        UpdateItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
                        _ => None,
                    });
                    match old {
                        Some(item) => Some(self.decode(&item).await?),
                        // Not every DynamoDB-compatible server answers the item: read it.
                        None => self.read(&record.scope, &record.key).await?,
                    }
                }
                Err(e) => return Err(self.err(e)),
            };
            let decision = decide_claim(live.as_ref(), request, now);
            if decision.write.is_none() {
                return Ok(decision.outcome);
            }
            // Expired or gone since the write was refused: write again.
        }
    }

    /// The error for a fenced write to `claim`'s record that changed nothing: why the claim
    /// is no longer held, read back.
    async fn lost(&self, claim: &Claim) -> Error {
        match self.read(&claim.scope, &claim.key).await {
            Ok(existing) => claim_lost(&self.name, existing.as_ref(), claim),
            Err(error) => error,
        }
    }

    /// `SET {set}` on `claim`'s record if `claim` still holds it in progress.
    async fn update_held(
        &self,
        claim: &Claim,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<()> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(ID, s(&record_id(&claim.scope, &claim.key)))
            .update_expression(update)
            .condition_expression("o_token = :held AND o_state = :p")
            .expression_attribute_values(":held", n(claim.token))
            .expression_attribute_values(":p", s("p"));
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if condition_failed(&e) => Err(self.lost(claim).await),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Counts of the records a scan finds, and removes up to `purge` of those expired before
    /// `before` (each only if still expired when removed, with the parts of their outcomes),
    /// stopping at the page where the `purge`-th went.
    async fn scan_records(
        &self,
        before: Timestamp,
        mut purge: usize,
        now: Timestamp,
    ) -> Result<(StoreStats, usize)> {
        let (mut stats, mut purged, mut start) = (StoreStats::default(), 0, None);
        let purging = purge > 0;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .projection_expression("o_id, o_state, o_expires")
                .filter_expression("attribute_exists(o_expires)")
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.err(e))?;
            for item in page.items() {
                let expires = match item.get("o_expires") {
                    Some(AttributeValue::N(ms)) => ms.parse::<i64>().ok(),
                    _ => None,
                }
                .ok_or_else(|| self.corrupt("o_expires is missing or not an integer".into()))?;
                let expires = Timestamp::from_millis(expires);
                // A part of a large outcome has no state: it goes with its record, uncounted.
                if let Some(state) = item.get("o_state") {
                    stats.records += 1;
                    if expires < now {
                        stats.expired += 1;
                    } else if matches!(state, AttributeValue::S(c) if c == "c") {
                        stats.completed += 1;
                    } else {
                        stats.in_progress += 1;
                    }
                }
                if purge > 0 && expires < before {
                    let Some(id) = item.get(ID) else { continue };
                    let removed = self
                        .client
                        .delete_item()
                        .table_name(&self.table)
                        .key(ID, id.clone())
                        .condition_expression("o_expires < :before")
                        .expression_attribute_values(":before", n(before.as_millis()))
                        .send()
                        .await;
                    match removed {
                        // A part goes uncounted: the limit is of records.
                        Ok(_) if item.contains_key("o_state") => {
                            purged += 1;
                            purge -= 1;
                        }
                        Ok(_) => {}
                        Err(e) if condition_failed(&e) => {}
                        Err(e) => return Err(self.err(e)),
                    }
                }
            }
            start = page.last_evaluated_key;
            // A purge stops at its limit, not at the end of the table.
            if start.is_none() || (purging && purge == 0) {
                return Ok((stats, purged));
            }
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        // In order, one key at a time: a key twice in one batch is then `New`, then
        // `InProgress`. DynamoDB's transactions would make a batch all or nothing, which the
        // contract does not ask for, at twice the write cost.
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            outcomes.push(self.claim_one(request, now).await?);
        }
        Ok(outcomes)
    }

    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()> {
        let mut values = vec![
            (":c", s("c")),
            (":e", n(expires_at.as_millis())),
            (":t", ttl(expires_at)),
        ];
        let update = if outcome.is_empty() {
            "SET o_state = :c, o_expires = :e, o_ttl = :t REMOVE o_outcome, o_parts"
        } else if outcome.len() <= PART_BYTES {
            values.push((":o", AttributeValue::B(Blob::new(outcome.to_vec()))));
            "SET o_state = :c, o_expires = :e, o_ttl = :t, o_outcome = :o REMOVE o_parts"
        } else {
            // Larger than an item may be: in parts first, each an item under this claim's
            // token, so a part of another attempt's outcome is never read as this one's. The
            // record names them only once all are written.
            let parts = outcome.chunks(PART_BYTES);
            values.push((":parts", n(parts.len())));
            for (part, bytes) in parts.enumerate() {
                let item = Item::from([
                    (
                        ID.to_owned(),
                        s(&part_id(&claim.scope, &claim.key, claim.token, part)),
                    ),
                    (
                        "o_part".to_owned(),
                        AttributeValue::B(Blob::new(bytes.to_vec())),
                    ),
                    ("o_expires".to_owned(), n(expires_at.as_millis())),
                    ("o_ttl".to_owned(), ttl(expires_at)),
                ]);
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map_err(|e| self.err(e))?;
            }
            "SET o_state = :c, o_expires = :e, o_ttl = :t, o_parts = :parts REMOVE o_outcome"
        };
        self.update_held(claim, update, values).await
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        let removed = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(ID, s(&record_id(&claim.scope, &claim.key)))
            .condition_expression("o_token = :held AND o_state = :p")
            .expression_attribute_values(":held", n(claim.token))
            .expression_attribute_values(":p", s("p"))
            .send()
            .await;
        match removed {
            Ok(_) => Ok(()),
            Err(e) if condition_failed(&e) => Err(self.lost(claim).await),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        let values = vec![(":e", n(lease_until.as_millis())), (":t", ttl(lease_until))];
        self.update_held(claim, "SET o_expires = :e, o_ttl = :t", values)
            .await
    }

    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        let removed = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(ID, s(&record_id(scope, key)))
            .condition_expression("o_token = :token")
            .expression_attribute_values(":token", n(token))
            .send()
            .await;
        match removed {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        self.read(scope, key).await
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let (_, purged) = self
            .scan_records(expired_before, limit, expired_before)
            .await?;
        Ok(purged)
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        Ok(self.scan_records(now, 0, now).await?.0)
    }

    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let id = version_id(scope, entity);
        let version_of = |item: Option<&Item>| -> Result<Option<u64>> {
            match item.and_then(|i| i.get("o_version")) {
                None => Ok(None),
                Some(AttributeValue::N(v)) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| self.corrupt(format!("o_version is not a u64: {v}"))),
                Some(_) => Err(self.corrupt("o_version is not a number".into())),
            }
        };
        loop {
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(ID, s(&id))
                .update_expression("SET o_version = :v")
                .condition_expression("attribute_not_exists(o_version) OR o_version < :v")
                .expression_attribute_values(":v", n(version))
                .return_values(ReturnValue::UpdatedOld)
                .send()
                .await;
            match updated {
                Ok(output) => {
                    return Ok(VersionCheck::Applied {
                        previous: version_of(output.attributes.as_ref())?,
                    });
                }
                Err(e) if condition_failed(&e) => {
                    let stored = version_of(self.get_item(id.clone()).await?.as_ref())?;
                    // Stale by the stored version; otherwise it changed since: write again.
                    if let stale @ VersionCheck::Stale { .. } = decide_version(stored, version) {
                        return Ok(stale);
                    }
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }
}
