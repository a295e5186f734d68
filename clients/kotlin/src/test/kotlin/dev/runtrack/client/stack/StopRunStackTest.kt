package dev.runtrack.client.stack

import dev.runtrack.client.Channels
import dev.runtrack.client.Connection
import dev.runtrack.client.RunPhase
import dev.runtrack.client.RunRecorder
import dev.runtrack.client.Tokens
import io.grpc.Status
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Tag
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import runtrack.v1.SummaryServiceGrpcKt.SummaryServiceCoroutineStub
import java.nio.file.Path
import kotlin.time.Duration.Companion.seconds

/**
 * STOP RUN is safe to send again (CONTRACT §3): the app killed after its STOP RUN reached the server
 * but before the answer came back finds the run STOPPING in its queue at the next start; the new
 * recorder sends the same request again, and gets the same Run.
 */
@Tag("stack")
class StopRunStackTest {
    @TempDir
    lateinit var dir: Path

    private val stack = StackEnvironment.current

    @Test
    fun `STOP RUN sent again by a new recorder on the same queue, and once more, answers the same Run`() = runBlocking {
        val token = stack.token("runner")
        val fixes = trail(100, origin = 52.5200 to 13.4050)
        val channel = stack.channel()
        val nowhere = Channels.plaintext("127.0.0.1", 1)  // the first process never reaches the server itself
        try {
            // The first process: records the run, asks for STOP RUN, and is killed while STOP RUN is under way.
            val request = TestPhone(dir).use { phone ->
                val recorder = RunRecorder(nowhere, phone.queue, phone.scope, Tokens { token }, testSettings)
                val runId = recorder.start()
                fixes.forEach(recorder::addPoint)
                withTimeout(30.seconds) { recorder.state.first { it.lastSeq == fixes.size } }
                phone.scope.launch { recorder.stop(timeZone = "Europe/Berlin") }
                withTimeout(30.seconds) { recorder.state.first { it.phase == RunPhase.STOPPING } }
                checkNotNull(phone.queue.run(runId)?.stop) { "the STOP RUN request is kept in the queue" }
            }
            val runId = request.runId
            assertEquals(fixes.size, request.overview.pointCount)
            // Its STOP RUN reached the server; the answer was lost with the process.
            val summary = SummaryServiceCoroutineStub(channel)
            val first = summary.stopRun(request, bearer(token))
            assertEquals(runId, first.runId)
            assertEquals(request.overview, first.overview)

            // The next start: the queue holds the run STOPPING; a new recorder takes it up and sends STOP RUN again.
            TestPhone(dir).use { phone ->
                val queued = phone.queue.runs().single()
                assertEquals(runId, queued.runId)
                assertEquals(RunPhase.STOPPING, queued.phase)
                val recorder = RunRecorder(channel, phone.queue, phone.scope, Tokens { token }, testSettings)
                recorder.reopen(runId)
                withTimeout(60.seconds) { recorder.synced() }
                assertEquals(Connection.IDLE, recorder.state.value.connection)
                assertEquals(fixes.size, recorder.state.value.durableSeq)

                // The recorder asked again: the same request, the same Run.
                val again = withTimeout(30.seconds) { recorder.stop() }
                assertEquals(first.withoutAnalysis(), again.withoutAnalysis(), "STOP RUN again: the same Run, stopped_at included")
            }
            // And the stub once more with the very request the queue kept.
            val third = summary.stopRun(request, bearer(token))
            assertEquals(first.withoutAnalysis(), third.withoutAnalysis())

            // Idempotent, not indifferent: another overview for the same run is refused (ALREADY_EXISTS).
            val other = request.toBuilder().setOverview(request.overview.toBuilder().setDistanceM(request.overview.distanceM + 100.0)).build()
            val refusal = refused("StopRun with another overview") { summary.stopRun(other, bearer(token)) }
            assertEquals(Status.Code.ALREADY_EXISTS, refusal.code)

            // The trail the reopened recorder sent after STOP RUN: every point once; the run kept its first overview.
            val (stored, _) = storedTrail(channel, runId, token)
            assertEquals((1..fixes.size).toList(), stored.map { it.seq })
            val dashboard = runWithAnalysis(channel, runId, token)
            assertEquals(first.withoutAnalysis(), dashboard.withoutAnalysis())
            assertEquals(fixes.size, dashboard.analysis.pointCount)
        } finally {
            nowhere.shutdownNow()
            channel.shutdownNow()
        }
    }
}
