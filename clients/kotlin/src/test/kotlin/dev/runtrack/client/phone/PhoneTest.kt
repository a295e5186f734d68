package dev.runtrack.client.phone

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.nio.file.Path

/** scripts/phone's input, options and clock: what needs no server. */
class PhoneTest {
    private fun trail(n: Int, spacingUs: Long) = (0 until n).map { InputFix(1_000_000_000_000L + it * spacingUs, 45.0 + it * 1e-5, 7.0) }

    @Test
    fun `a fix a line is read with its empty fields as not measured`() {
        val fixes = readFixes("1700000000000000\t48.85\t2.29\t35.5\t142\t170\t3.3\t0\n\n1700000001000000\t48.86\t2.3\t\t\t\t\t1\n".reader().buffered())
        assertEquals(2, fixes.size)
        assertEquals(InputFix(1_700_000_000_000_000, 48.85, 2.29, 35.5, 142, 170, 3.3f, false), fixes[0])
        assertNull(fixes[1].altitudeM)
        assertNull(fixes[1].heartRateBpm)
        assertTrue(fixes[1].afterPause)
        assertThrows<IllegalArgumentException> { readFixes("1\t2\t3\n".reader().buffered()) }
    }

    @Test
    fun `at one hertz on a one hertz trail each fix carries the moment it is recorded`() {
        val fixes = trail(60, 1_000_000)
        val start = 1_800_000_000_000_000L
        val shift = timeShiftUs(fixes, start, 1.0)
        fixes.forEachIndexed { i, fix -> assertEquals(start + i * 1_000_000L, fix.timeUs + shift) }
    }

    @Test
    fun `faster than the trail, the spacing is kept and the last fix is the moment recording ends`() {
        val fixes = trail(600, 1_000_000)
        val start = 1_800_000_000_000_000L
        val shift = timeShiftUs(fixes, start, 20.0)
        assertEquals(start + 599 * 50_000L, fixes.last().timeUs + shift)
        fixes.forEachIndexed { i, fix -> assertTrue(fix.timeUs + shift <= start + i * 50_000L, "fix $i is later than its recording") }
        assertEquals(1_000_000L, fixes[1].timeUs - fixes[0].timeUs)
    }

    @Test
    fun `a run is taken up only from the input it was recorded from`() {
        val fixes = trail(10, 1_000_000)
        assertTrue(sameFixes(fixes, fixes.take(4).map { it.latitude to it.longitude }))
        assertTrue(sameFixes(fixes, emptyList()))
        assertFalse(sameFixes(fixes, listOf(1.0 to 2.0)))
        assertFalse(sameFixes(fixes.take(2), fixes.take(3).map { it.latitude to it.longitude }))
    }

    @Test
    fun `options name the endpoint, the queue and the rate, and the token may come from the environment`() {
        val options = PhoneOptions.parse(
            listOf("--endpoint", "localhost:8443", "--ca", "ca.pem", "--queue", "q.db", "--rate", "20"),
            env = mapOf("RUNTRACK_TOKEN" to "jwt"),
        )
        assertEquals("localhost", options.host)
        assertEquals(8443, options.port)
        assertEquals(Path.of("ca.pem"), options.caPem)
        assertEquals(20.0, options.rate)
        assertEquals("jwt", options.token)
        assertEquals("::1", PhoneOptions.parse(listOf("--endpoint", "[::1]:8080", "--queue", "q", "--plaintext"), env = emptyMap()).host)
        assertThrows<IllegalArgumentException> { PhoneOptions.parse(listOf("--endpoint", "localhost", "--queue", "q"), env = emptyMap()) }
        assertThrows<IllegalArgumentException> { PhoneOptions.parse(listOf("--endpoint", "h:1", "--queue", "q", "--rate", "0"), env = emptyMap()) }
        assertThrows<IllegalArgumentException> {
            PhoneOptions.parse(listOf("--endpoint", "h:1", "--queue", "q", "--plaintext", "--ca", "x"), env = emptyMap())
        }
    }
}
