package dev.runtrack.client

import org.sqlite.SQLiteConfig
import runtrack.v1.Summary.StopRunRequest
import runtrack.v1.Tracking.TrackPoint
import java.nio.file.Path
import java.sql.Connection
import java.sql.PreparedStatement
import java.sql.ResultSet

/**
 * [PointQueue] in one SQLite file: write-ahead log, full sync (a committed append survives the app
 * being killed and the phone losing power), every statement prepared once. Safe to share between
 * threads: calls are serialised on one connection.
 */
class SqlitePointQueue(path: Path) : PointQueue {
    private val connection: Connection = SQLiteConfig().apply {
        setJournalMode(SQLiteConfig.JournalMode.WAL)
        setSynchronous(SQLiteConfig.SynchronousMode.FULL)
        setBusyTimeout(5_000)
    }.createConnection("jdbc:sqlite:$path")

    private val statements: Map<String, PreparedStatement>

    init {
        val queries = namedQueries(checkNotNull(javaClass.getResource("point_queue.sql")).readText())
        connection.createStatement().use { ddl -> QUERIES_SCHEMA.forEach { ddl.execute(queries.getValue(it)) } }
        connection.autoCommit = false
        statements = (queries - QUERIES_SCHEMA.toSet()).mapValues { connection.prepareStatement(it.value) }
    }

    override fun saveRun(run: QueuedRun) {
        transaction { update("save_run", run.runId, run.userId, run.phase.name, run.lastSeq, run.durableSeq, run.stop?.toByteArray()) }
    }

    override fun run(runId: String): QueuedRun? = locked { query("get_run", runId) { it.toRun() }.firstOrNull() }

    override fun runs(): List<QueuedRun> = locked { query("list_runs") { it.toRun() } }

    override fun append(runId: String, points: List<TrackPoint>) {
        if (points.isEmpty()) return
        transaction {
            check(update("raise_last_seq", points.maxOf { it.seq }, runId) == 1) { "run $runId is not in the queue" }
            val insert = statements.getValue("append_point")
            for (point in points) {
                bind(insert, runId, point.seq, point.toByteArray())
                insert.addBatch()
            }
            insert.executeBatch()
        }
    }

    override fun unacknowledged(runId: String, afterSeq: Int, limit: Int): List<TrackPoint> =
        locked { query("unacknowledged", runId, afterSeq, limit) { TrackPoint.parseFrom(it.getBytes(1)) } }

    override fun acknowledge(runId: String, durableSeq: Int) {
        transaction { update("acknowledge", durableSeq, runId) }
    }

    override fun pendingCount(runId: String): Int = locked { query("pending_count", runId) { it.getInt(1) }.single() }

    override fun pendingRuns(): List<String> = locked { query("pending_runs") { it.getString(1) } }

    override fun trail(runId: String): List<TrackPoint> =
        locked { query("trail", runId) { TrackPoint.parseFrom(it.getBytes(1)) } }

    override fun forget(runId: String) {
        transaction {
            update("forget_points", runId)
            update("forget_run", runId)
        }
    }

    override fun close() = locked {
        statements.values.forEach { it.close() }
        connection.close()
    }

    private fun <T> locked(block: () -> T): T = synchronized(connection) { block() }

    private fun <T> transaction(block: () -> T): T = locked {
        try {
            block().also { connection.commit() }
        } catch (error: Throwable) {
            connection.rollback()
            throw error
        }
    }

    private fun update(name: String, vararg values: Any?): Int =
        statements.getValue(name).let { bind(it, *values); it.executeUpdate() }

    private fun <T> query(name: String, vararg values: Any?, row: (ResultSet) -> T): List<T> {
        val statement = statements.getValue(name)
        bind(statement, *values)
        return try {
            statement.executeQuery().use { rows -> buildList { while (rows.next()) add(row(rows)) } }
        } finally {
            connection.commit()  // ends the read transaction, so the WAL can be checkpointed
        }
    }

    private fun bind(statement: PreparedStatement, vararg values: Any?) =
        values.forEachIndexed { i, value -> statement.setObject(i + 1, value) }

    private fun ResultSet.toRun() = QueuedRun(
        runId = getString("run_id"),
        userId = getString("user_id"),
        phase = RunPhase.valueOf(getString("phase")),
        lastSeq = getInt("last_seq"),
        durableSeq = getInt("durable_seq"),
        stop = getBytes("stop_request")?.let(StopRunRequest::parseFrom),
    )

    private companion object {
        val QUERIES_SCHEMA = listOf("create_runs", "create_points")
    }
}

/** The named blocks of a .sql file: `-- name: <name>` starts one; comment lines and the final `;` are left out. */
internal fun namedQueries(text: String): Map<String, String> {
    val name = Regex("""^--\s*name:\s*(\w+)\s*$""", RegexOption.MULTILINE)
    val marks = name.findAll(text).toList()
    return marks.withIndex().associate { (i, mark) ->
        val body = text.substring(mark.range.last + 1, marks.getOrNull(i + 1)?.range?.first ?: text.length)
        mark.groupValues[1] to body.lines().filterNot { it.trimStart().startsWith("--") }
            .joinToString("\n").trim().removeSuffix(";").trim()
    }
}
