package dev.runtrack.client.stack

import dev.runtrack.client.LiveLinks
import dev.runtrack.client.RunRecorder
import dev.runtrack.client.Tokens
import dev.runtrack.client.errorDetails
import io.grpc.Status
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Tag
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import runtrack.v1.Tracking.LiveState
import runtrack.v1.Tracking.RunEvent
import runtrack.v1.TrackingServiceGrpcKt.TrackingServiceCoroutineStub
import runtrack.v1.getTrackRequest
import runtrack.v1.watchRunRequest
import java.nio.file.Path
import java.util.Collections
import kotlin.time.Duration.Companion.seconds

/**
 * Live links made from the phone (CONTRACT §13) with [LiveLinks]: created while the run records (its
 * token and share URL returned once), listed without them, followed with WatchRun on the link's token,
 * and revoked: the open watch ends UNAUTHENTICATED and the link opens nothing more, while another link
 * of the same run keeps working.
 */
@Tag("stack")
class LiveLinksStackTest {
    @TempDir
    lateinit var dir: Path

    private val stack = StackEnvironment.current

    /** A WatchRun stream on [token], read in [scope]: its events, and how it ended (null: cleanly). */
    private class Watch(scope: CoroutineScope, tracking: TrackingServiceCoroutineStub, runId: String, token: String) {
        val events: MutableList<RunEvent> = Collections.synchronizedList(mutableListOf())
        val ended = CompletableDeferred<Exception?>()
        private val job = scope.launch(start = CoroutineStart.UNDISPATCHED) {
            try {
                tracking.watchRun(watchRunRequest { this.runId = runId }, bearer(token)).collect { events += it }
                ended.complete(null)
            } catch (error: CancellationException) {
                throw error
            } catch (error: Exception) {
                ended.complete(error)
            }
        }

        fun seqs(): Set<Int> = events.toList().filter { it.hasPoints() }.flatMap { it.points.pointsList }.map { it.seq }.toSet()

        suspend fun until(what: String, predicate: (Watch) -> Boolean) {
            withTimeout(15.seconds) {
                while (!predicate(this@Watch)) {
                    check(!ended.isCompleted) { "the watch ended ($what not seen) after ${events.toList()}: ${ended.await()}" }
                    delay(50)
                }
            }
        }

        fun cancel() = job.cancel()
    }

    @Test
    fun `a live link is created from the phone, listed, followed, and once revoked no longer works`() = runBlocking {
        val token = stack.token("linker")
        val fixes = trail(21, origin = 59.3293 to 18.0686)
        val channel = stack.channel()
        try {
            TestPhone(dir).use { phone ->
                val recorder = RunRecorder(channel, phone.queue, phone.scope, Tokens { token }, testSettings)
                val runId = recorder.start()
                fixes.dropLast(1).forEach(recorder::addPoint)
                // A link needs the run to be the caller's on the server: its first points durable.
                withTimeout(30.seconds) { recorder.state.first { it.durableSeq == fixes.size - 1 } }

                val links = LiveLinks(channel, Tokens { token })
                val link = links.create(runId)
                assertEquals(runId, link.runId)
                assertTrue(link.linkId.isNotEmpty())
                assertTrue(link.token.count { it == '.' } == 2, "the link's token is a JWT: ${link.token}")
                assertTrue(link.url.matches(Regex("https?://[^#]+/#live=.+")), link.url)
                assertEquals(link.token, link.url.substringAfter("#live="), "the share URL carries the token")
                val keep = links.create(runId)

                val listed = links.list(runId)
                assertEquals(setOf(link.linkId, keep.linkId), listed.map { it.linkId }.toSet())
                assertTrue(listed.all { it.token.isEmpty() && it.url.isEmpty() && it.runId == runId }, "listed without their tokens: $listed")

                // The link's holder follows the run: its state, then the points stored so far.
                val tracking = TrackingServiceCoroutineStub(channel)
                val watch = Watch(phone.scope, tracking, runId, link.token)
                watch.until("the stored points") { (1 until fixes.size).all { seq -> seq in it.seqs() } }
                val first = watch.events.first()
                assertTrue(first.hasState() && first.state.state == LiveState.LIVE, "the first event is the run's state: $first")
                // A link grants watching its run, not reading the trail.
                val trail = refused("GetTrack on a link's token") {
                    tracking.getTrack(getTrackRequest { this.runId = runId }, bearer(link.token))
                }
                assertEquals(Status.Code.UNAUTHENTICATED, trail.code)
                val kept = Watch(phone.scope, tracking, runId, keep.token)
                kept.until("the other link's first event") { it.events.isNotEmpty() }

                links.revoke(runId, link.linkId)
                // The open watch is cut off within seconds.
                val cut = withTimeout(15.seconds) { watch.ended.await() }
                val cutDetails = errorDetails(checkNotNull(cut) { "the revoked link's watch ended cleanly" })
                assertEquals(Status.Code.UNAUTHENTICATED, cutDetails?.code, "$cut")
                assertEquals("LINK_REVOKED", cutDetails?.reason)
                // And a new one is refused.
                val again = refused("WatchRun on a revoked link") {
                    tracking.watchRun(watchRunRequest { this.runId = runId }, bearer(link.token)).first()
                }
                assertEquals(Status.Code.UNAUTHENTICATED, again.code)
                assertEquals("LINK_REVOKED", again.reason)
                assertEquals(listOf(keep.linkId), links.list(runId).map { it.linkId })

                // The other link still follows the run: the next point reaches it.
                recorder.addPoint(fixes.last())
                kept.until("the next point") { fixes.size in it.seqs() }
                assertTrue(!kept.ended.isCompleted, "the other link's watch goes on")
                kept.cancel()

                withTimeout(60.seconds) { recorder.stop() }
                withTimeout(60.seconds) { recorder.synced() }
            }
        } finally {
            channel.shutdownNow()
        }
    }
}
