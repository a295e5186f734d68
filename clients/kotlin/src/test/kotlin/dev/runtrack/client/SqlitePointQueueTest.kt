package dev.runtrack.client

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import runtrack.v1.stopRunRequest
import runtrack.v1.trackPoint
import java.nio.file.Path
import java.sql.DriverManager
import java.util.UUID

class SqlitePointQueueTest {
    @TempDir
    lateinit var dir: Path

    private val file get() = dir.resolve("queue.db")

    private fun point(seq: Int, latitude: Double = 45.0) = trackPoint {
        this.seq = seq
        this.latitude = latitude
        longitude = 7.0
    }

    private fun newRun(queue: PointQueue): String =
        UUID.randomUUID().toString().also { queue.saveRun(QueuedRun(it, "runner", RunPhase.RECORDING)) }

    private fun PointQueue.seqs(runId: String, afterSeq: Int = 0, limit: Int = Int.MAX_VALUE) =
        unacknowledged(runId, afterSeq, limit).map { it.seq }

    @Test
    fun `points and the run's state survive closing and reopening the database`() {
        val runId: String
        SqlitePointQueue(file).use { queue ->
            runId = newRun(queue)
            queue.append(runId, (1..3).map { point(it) })
            queue.acknowledge(runId, 1)
            queue.saveRun(queue.run(runId)!!.copy(phase = RunPhase.PAUSED))
        }
        SqlitePointQueue(file).use { queue ->
            assertEquals(listOf(2, 3), queue.seqs(runId))
            assertEquals(QueuedRun(runId, "runner", RunPhase.PAUSED, lastSeq = 3, durableSeq = 1), queue.run(runId))
            assertEquals(listOf(runId), queue.pendingRuns())
        }
    }

    @Test
    fun `the database is in write-ahead-log mode`() {
        SqlitePointQueue(file).use { newRun(it) }
        DriverManager.getConnection("jdbc:sqlite:$file").use { connection ->
            connection.createStatement().executeQuery("PRAGMA journal_mode").use { it.next(); assertEquals("wal", it.getString(1)) }
        }
    }

    @Test
    fun `waiting points come in seq order, after the seq asked, at most the limit`() {
        SqlitePointQueue(file).use { queue ->
            val runId = newRun(queue)
            queue.append(runId, listOf(point(4), point(1)))
            queue.append(runId, listOf(point(3), point(2), point(5)))
            assertEquals(listOf(1, 2, 3, 4, 5), queue.seqs(runId))
            assertEquals(listOf(3, 4), queue.seqs(runId, afterSeq = 2, limit = 2))
            assertEquals(5, queue.run(runId)!!.lastSeq)
        }
    }

    @Test
    fun `acknowledged points are never sent again but stay in the trail until the run is forgotten`() {
        SqlitePointQueue(file).use { queue ->
            val runId = newRun(queue)
            queue.append(runId, (1..5).map { point(it) })
            queue.acknowledge(runId, 3)
            assertEquals(listOf(4, 5), queue.seqs(runId))
            assertEquals(listOf(4, 5), queue.seqs(runId, afterSeq = 1))
            assertEquals(2, queue.pendingCount(runId))
            assertEquals((1..5).toList(), queue.trail(runId).map { it.seq })

            queue.acknowledge(runId, 5)
            assertEquals(emptyList<String>(), queue.pendingRuns())
            queue.forget(runId)
            assertNull(queue.run(runId))
            assertEquals(emptyList<Int>(), queue.trail(runId).map { it.seq })
        }
    }

    @Test
    fun `the durable seq and the last seq never move back`() {
        SqlitePointQueue(file).use { queue ->
            val runId = newRun(queue)
            queue.append(runId, (1..5).map { point(it) })
            queue.acknowledge(runId, 4)
            queue.acknowledge(runId, 2)  // a late answer from an older stream
            queue.saveRun(QueuedRun(runId, "runner", RunPhase.RECORDING))  // cursors 0 in the update
            assertEquals(4, queue.run(runId)!!.durableSeq)
            assertEquals(5, queue.run(runId)!!.lastSeq)
            assertEquals(listOf(5), queue.seqs(runId))
        }
    }

    @Test
    fun `two runs keep their points and cursors apart`() {
        SqlitePointQueue(file).use { queue ->
            val first = newRun(queue)
            val second = newRun(queue)
            queue.append(first, (1..3).map { point(it, latitude = 1.0) })
            queue.append(second, (1..2).map { point(it, latitude = 2.0) })
            queue.acknowledge(first, 3)
            assertEquals(listOf(second), queue.pendingRuns())
            assertEquals(listOf(1, 2), queue.seqs(second))
            assertEquals(listOf(2.0, 2.0), queue.unacknowledged(second).map { it.latitude })
            assertEquals(0, queue.pendingCount(first))
            assertEquals(listOf(first, second), queue.runs().map { it.runId })
        }
    }

    @Test
    fun `a seq appended twice is kept once, as last appended`() {
        SqlitePointQueue(file).use { queue ->
            val runId = newRun(queue)
            queue.append(runId, listOf(point(1, latitude = 10.0)))
            queue.append(runId, listOf(point(1, latitude = 11.0)))
            assertEquals(listOf(11.0), queue.trail(runId).map { it.latitude })
        }
    }

    @Test
    fun `points of a run the queue does not know are refused and nothing is stored`() {
        SqlitePointQueue(file).use { queue ->
            val stranger = UUID.randomUUID().toString()
            assertThrows(IllegalStateException::class.java) { queue.append(stranger, listOf(point(1))) }
            assertEquals(emptyList<Int>(), queue.trail(stranger).map { it.seq })
        }
    }

    @Test
    fun `the STOP RUN request is kept with the run`() {
        SqlitePointQueue(file).use { queue ->
            val runId = newRun(queue)
            val stop = stopRunRequest { this.runId = runId; timeZone = "Europe/Paris" }
            queue.saveRun(queue.run(runId)!!.copy(phase = RunPhase.STOPPING, stop = stop))
        }
        SqlitePointQueue(file).use { queue ->
            val run = queue.runs().single()
            assertEquals(RunPhase.STOPPING, run.phase)
            assertEquals("Europe/Paris", run.stop!!.timeZone)
        }
    }
}
